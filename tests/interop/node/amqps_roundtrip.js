// amqplib (Node.js) over amqps:// against Ferry: connect with TLS trusting the given CA, declare a
// server-named queue, publish with publisher confirms, consume the message back and ack it.
// With a client certificate it logs in with EXTERNAL instead of a password. Prints one JSON
// line with what happened; exits non-zero on any failure. Run by tests/interop/test_tls.py.
//
//   node amqps_roundtrip.js amqps://guest:guest@localhost:5671/%2f ca.pem [client.pem client.key]
"use strict";
const fs = require("fs");
const amqp = require("amqplib");

async function main() {
  const [url, caFile, certFile, keyFile] = process.argv.slice(2);
  const socketOptions = { ca: [fs.readFileSync(caFile)], servername: "localhost" };
  if (certFile) {
    socketOptions.cert = fs.readFileSync(certFile);
    socketOptions.key = fs.readFileSync(keyFile);
    socketOptions.credentials = amqp.credentials.external();
  }
  const conn = await amqp.connect(url, socketOptions);
  try {
    const ch = await conn.createConfirmChannel();
    const { queue } = await ch.assertQueue("", { exclusive: true });
    const body = Buffer.from("over amqps from amqplib");
    await new Promise((resolve, reject) =>
      ch.sendToQueue(queue, body, { persistent: true }, (err) => (err ? reject(err) : resolve())));
    const got = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no delivery within 10 s")), 10000);
      ch.consume(queue, (msg) => {
        clearTimeout(timer);
        ch.ack(msg);
        resolve(msg.content.toString());
      });
    });
    console.log(JSON.stringify({ queue, got, server: conn.connection.serverProperties.product }));
    await ch.close();
  } finally {
    await conn.close();
  }
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
