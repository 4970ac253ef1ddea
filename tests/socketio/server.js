// One Socket.IO server: listens on 127.0.0.1 (port 0: any), prints its port, and answers
// "echo" with its name and the transport the client is on.
const http = require("http");
const { Server } = require("socket.io");

const name = process.argv[2];
const httpServer = http.createServer();
const io = new Server(httpServer);
io.on("connection", (socket) => {
  socket.on("echo", (message, ack) => {
    ack({ server: name, message, transport: socket.conn.transport.name });
  });
});
httpServer.listen(0, "127.0.0.1", () => {
  console.log(`port ${httpServer.address().port}`);
});
