//! [`AmqpError`]: a reply code, its text, and whether it closes the channel or the
//! connection; the core's routing errors map to RabbitMQ's codes here.

use super::*;

/// An AMQP error: a reply code, its text, and whether it closes the connection.
#[derive(Debug, Clone)]
pub struct AmqpError {
    pub code: u16,
    pub text: String,
    /// Connection errors close the connection; channel errors close only the channel.
    pub connection: bool,
}

impl AmqpError {
    pub fn channel(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
            connection: false,
        }
    }

    pub fn connection(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
            connection: true,
        }
    }

    /// The reply text with the code's name in front, as RabbitMQ writes it.
    pub fn reply_text(&self) -> String {
        let name = match self.code {
            311 => "CONTENT_TOO_LARGE",
            312 => "NO_ROUTE",
            403 => "ACCESS_REFUSED",
            404 => "NOT_FOUND",
            405 => "RESOURCE_LOCKED",
            406 => "PRECONDITION_FAILED",
            320 => "CONNECTION_FORCED",
            501 => "FRAME_ERROR",
            502 => "SYNTAX_ERROR",
            503 => "COMMAND_INVALID",
            504 => "CHANNEL_ERROR",
            505 => "UNEXPECTED_FRAME",
            530 => "NOT_ALLOWED",
            540 => "NOT_IMPLEMENTED",
            _ => "INTERNAL_ERROR",
        };
        let mut t = format!("{name} - {}", self.text);
        // A short string holds at most 255 bytes.
        if t.len() > 255 {
            let mut cut = 255;
            while !t.is_char_boundary(cut) {
                cut -= 1;
            }
            t.truncate(cut);
        }
        t
    }
}

impl From<RoutingError> for AmqpError {
    fn from(e: RoutingError) -> Self {
        let text = e.client_message();
        match e {
            RoutingError::NotFound { .. } => AmqpError::channel(404, text),
            RoutingError::PreconditionFailed(_) => AmqpError::channel(406, text),
            RoutingError::ResourceLocked { .. } => AmqpError::channel(405, text),
            RoutingError::AccessRefused(_) => AmqpError::channel(403, text),
            RoutingError::InvalidRequest(_) => AmqpError::connection(503, text),
            RoutingError::Log(_) | RoutingError::Meta(_) => AmqpError::connection(541, text),
        }
    }
}
