//! Bindings: checks on source and destination, durability rules, bind and unbind.

use super::*;

impl RouterInner {
    pub(super) fn binding_target_check(
        &self,
        b: &BindingDef,
    ) -> Result<Arc<Exchange>, RoutingError> {
        if b.source.is_empty() {
            return Err(RoutingError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        let ex = self.existing_exchange(&b.vhost, &b.source)?;
        match b.destination_kind {
            DestinationKind::Queue => {
                self.existing_queue(&b.vhost, &b.destination)?;
            }
            DestinationKind::Exchange => {
                self.existing_exchange(&b.vhost, &b.destination)?;
            }
        }
        Ok(ex)
    }

    pub(super) fn binding_is_durable(&self, b: &BindingDef, ex: &Exchange) -> bool {
        let dest_durable = match b.destination_kind {
            DestinationKind::Queue => self
                .queue(&b.vhost, &b.destination)
                .is_some_and(|q| q.persistent()),
            DestinationKind::Exchange => self
                .exchange(&b.vhost, &b.destination)
                .is_some_and(|e| e.def().durable),
        };
        ex.def().durable && dest_durable
    }

    /// Binds a queue or exchange to an exchange. Idempotent.
    pub async fn bind(&self, b: BindingDef) -> Result<(), RoutingError> {
        let _admin = self.admin.lock().await;
        let ex = self.binding_target_check(&b)?;
        if self.binding_is_durable(&b, &ex) {
            self.meta.put_binding(&b)?;
            self.meta.flush()?;
        }
        ex.add_binding(b);
        Ok(())
    }

    /// Removes a binding. Unbinding one that does not exist is not an error (RabbitMQ).
    pub async fn unbind(&self, b: BindingDef) -> Result<(), RoutingError> {
        let _admin = self.admin.lock().await;
        let ex = self.binding_target_check(&b)?;
        if ex.remove_binding(&b) {
            if self.binding_is_durable(&b, &ex) {
                self.meta.delete_binding(&b)?;
            }
            self.auto_delete_exchanges(vec![ex]);
        }
        Ok(())
    }
}
