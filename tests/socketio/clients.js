// N Socket.IO clients with the default transports (long-polling first, then the upgrade to
// WebSocket) against URL. Mode "ip": client i connects from 127.0.0.(1 + i % 20); mode
// "cookie": all from 127.0.0.1, each keeping its own cookies (withCredentials). Each waits for
// the upgrade, sends three echoes, and gives up DEADLINE ms after it started. Prints one JSON
// line: how many upgraded and echoed, the errors, and the servers each client reached. With
// "first-break", it prints as soon as one session breaks (an error other than the deadline),
// for a balance that is expected to break them.
const http = require("http");
const { io } = require("socket.io-client");

const [url, count, mode, deadline, firstBreak] = [
  process.argv[2],
  Number(process.argv[3]),
  process.argv[4],
  Number(process.argv[5]),
  process.argv[6] === "first-break",
];
const LATE = `no upgrade and three echoes within ${deadline} ms`;
const results = [];

function report() {
  const errors = results.filter((r) => r.error).map((r) => r.error);
  const perServer = {};
  for (const r of results) for (const s of r.servers) perServer[s] = (perServer[s] || 0) + 1;
  console.log(
    JSON.stringify({
      clients: count,
      finished: results.length,
      upgraded: results.filter((r) => r.upgraded).length,
      echoed: results.filter((r) => !r.error).length,
      mixed: results.filter((r) => r.servers.length > 1).length,
      perServer,
      errors: errors.slice(0, 5),
      errorCount: errors.length,
      late: errors.filter((e) => e === LATE).length,
    }),
  );
  process.exit(0);
}

function run(i) {
  return new Promise((resolve) => {
    const options = { reconnection: false, timeout: deadline, forceNew: true };
    if (mode === "ip") {
      options.agent = new http.Agent({ localAddress: `127.0.0.${1 + (i % 20)}` });
    } else {
      options.withCredentials = true;
    }
    const socket = io(url, options);
    const servers = new Set();
    let upgraded = false;
    let done = false;
    // The first outcome counts: closing the socket below fires "disconnect" again.
    const finish = (error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      const result = { error, upgraded, servers: [...servers] };
      results.push(result);
      socket.close();
      resolve(result);
      if (firstBreak && error && error !== LATE) report();
    };
    const timer = setTimeout(() => finish(LATE), deadline);
    socket.on("connect_error", (e) => finish(`connect_error: ${e.message}`));
    socket.on("disconnect", (reason) => {
      if (!upgraded) finish(`disconnected: ${reason}`);
    });
    socket.on("connect", () => {
      const echo = async () => {
        for (let k = 0; k < 3; k++) {
          const reply = await socket.timeout(deadline).emitWithAck("echo", `m${i}.${k}`);
          if (reply.message !== `m${i}.${k}`) throw new Error("wrong echo");
          servers.add(reply.server);
        }
      };
      const upgradedThenEcho = () => {
        upgraded = true;
        echo().then(
          () => finish(null),
          (e) => finish(`echo: ${e.message}`),
        );
      };
      if (socket.io.engine.transport.name === "websocket") upgradedThenEcho();
      else socket.io.engine.once("upgrade", upgradedThenEcho);
    });
  });
}

Promise.all(Array.from({ length: count }, (_, i) => run(i))).then(report);
