// Preloaded by impresario-mcp's tests (`node --require ./loopback.cjs ...`): server-everything's
// HTTP transport passes only a port to listen(), which binds every interface; this binds it to
// 127.0.0.1, as every server a test starts must.
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, ...rest) {
  if (typeof port === "number" || typeof port === "string") {
    return listen.call(this, Number(port), "127.0.0.1", ...rest);
  }
  return listen.call(this, port, ...rest);
};
