// @y/websocket-server's own connection handler (setupWSConnection: y-protocols sync and
// awareness, one in-memory Y.Doc per room, as `npx y-websocket` runs it) on 127.0.0.1 and
// a free port. Prints "listening on ws://127.0.0.1:PORT" first, as replica's relay does,
// for benchmarks/_node.py. Stops on SIGTERM.
import http from 'node:http'
import { WebSocketServer } from 'ws'
import { setupWSConnection } from '@y/websocket-server/utils'

const wss = new WebSocketServer({ noServer: true, maxPayload: 256 * 1024 * 1024 })
wss.on('connection', setupWSConnection)
const server = http.createServer((_request, response) => {
  response.writeHead(426)
  response.end()
})
server.on('upgrade', (request, socket, head) => {
  wss.handleUpgrade(request, socket, head, (ws) => wss.emit('connection', ws, request))
})
server.listen(0, '127.0.0.1', () => {
  console.log(`listening on ws://127.0.0.1:${server.address().port}`)
})
process.on('SIGTERM', () => {
  for (const ws of wss.clients) ws.terminate()
  server.close(() => process.exit(0))
})
