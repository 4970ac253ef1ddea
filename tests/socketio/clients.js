// N Socket.IO clients with the default transports (long-polling first, then the upgrade to
// WebSocket) against URL. Mode "ip": client i connects from 127.0.0.(1 + i % 20); mode
// "cookie": all from 127.0.0.1, each keeping its own cookies (withCredentials). Each waits for
// the upgrade, sends three echoes, and prints one JSON line: how many upgraded and echoed,
// the errors, and the servers each client reached.
const http = require("http");
const { io } = require("socket.io-client");

const [url, count, mode] = [process.argv[2], Number(process.argv[3]), process.argv[4]];

function run(i) {
  return new Promise((resolve) => {
    const options = { reconnection: false, timeout: 10000, forceNew: true };
    if (mode === "ip") {
      options.agent = new http.Agent({ localAddress: `127.0.0.${1 + (i % 20)}` });
    } else {
      options.withCredentials = true;
    }
    const socket = io(url, options);
    const servers = new Set();
    let upgraded = false;
    const finish = (error) => {
      socket.close();
      resolve({ error, upgraded, servers: [...servers] });
    };
    const timer = setTimeout(() => finish("no upgrade and echo within 20 s"), 20000);
    socket.on("connect_error", (e) => {
      clearTimeout(timer);
      finish(`connect_error: ${e.message}`);
    });
    socket.on("disconnect", (reason) => {
      if (!upgraded) {
        clearTimeout(timer);
        finish(`disconnected: ${reason}`);
      }
    });
    socket.on("connect", () => {
      const echo = async () => {
        for (let k = 0; k < 3; k++) {
          const reply = await socket.timeout(5000).emitWithAck("echo", `m${i}.${k}`);
          if (reply.message !== `m${i}.${k}`) throw new Error("wrong echo");
          servers.add(reply.server);
        }
      };
      const upgradedThenEcho = () => {
        upgraded = true;
        echo().then(
          () => {
            clearTimeout(timer);
            finish(null);
          },
          (e) => {
            clearTimeout(timer);
            finish(`echo: ${e.message}`);
          },
        );
      };
      if (socket.io.engine.transport.name === "websocket") upgradedThenEcho();
      else socket.io.engine.once("upgrade", upgradedThenEcho);
    });
  });
}

Promise.all(Array.from({ length: count }, (_, i) => run(i))).then((results) => {
  const errors = results.filter((r) => r.error).map((r) => r.error);
  const perServer = {};
  for (const r of results) for (const s of r.servers) perServer[s] = (perServer[s] || 0) + 1;
  console.log(
    JSON.stringify({
      clients: count,
      upgraded: results.filter((r) => r.upgraded).length,
      echoed: results.filter((r) => !r.error).length,
      mixed: results.filter((r) => r.servers.length > 1).length,
      perServer,
      errors: errors.slice(0, 5),
      errorCount: errors.length,
    }),
  );
  process.exit(0);
});
