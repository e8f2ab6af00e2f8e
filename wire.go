package chat

import (
	"bufio"
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// WebSocket opcodes, and the close codes the server sends.
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA

	closeNormal    = 1000
	closeGoingAway = 1001
	closeProtocol  = 1002
	closeBadData   = 1007 // invalid UTF-8
	closePolicy    = 1008
	closeTooBig    = 1009
	closeTryLater  = 1013
)

// wireConn is a client's TCP connection after the hijack. It exists because
// x/net/websocket hides two things the server needs:
//
//   - Liveness. Every Read pushes the deadline to now+readTimeout: any byte
//     from the peer, pong included, proves it alive, and a peer silent for
//     readTimeout fails the read. A frame being read is also bounded as a
//     whole (frameBy), or a peer could drip one byte per readTimeout.
//   - Write control. x/net writes one frame per syscall and only close code
//     1000. The client's writer encodes frames itself and sends a whole
//     batch, close frames with any code and pongs included, in one Write.
//     wmu keeps those batches and x/net's own writes (the handshake) whole.
type wireConn struct {
	net.Conn
	reader       *bufio.Reader // what x/net reads frames from
	readTimeout  time.Duration
	writeTimeout time.Duration
	ahead        []byte       // bytes net/http read past the request before the hijack
	closeBy      atomic.Int64 // Unix ns; once set, reads fail by then whatever arrives
	detached     atomic.Bool  // the client's goroutine owns the connection: Close is a no-op
	frameBy      int64        // Unix ns; the message being read must be whole by then (0: none). Reader only

	wmu sync.Mutex
}

func newWireConn(c net.Conn, buffered *bufio.Reader, cfg *config) *wireConn {
	w := &wireConn{Conn: c, readTimeout: cfg.readTimeout, writeTimeout: cfg.writeTimeout}
	if n := buffered.Buffered(); n > 0 {
		w.ahead, _ = buffered.Peek(n)
		w.ahead = append([]byte(nil), w.ahead...)
	}
	// A small buffer: frame headers (14 bytes at most) are read through it,
	// larger payloads bypass it. net/http's 4 KiB reader is released with the request.
	w.reader = bufio.NewReaderSize(w, 256)
	return w
}

func (w *wireConn) Read(p []byte) (int, error) {
	if len(w.ahead) > 0 {
		n := copy(p, w.ahead)
		w.ahead = w.ahead[n:]
		return n, nil
	}
	deadline := time.Now().Add(w.readTimeout).UnixNano()
	if w.frameBy != 0 && w.frameBy < deadline {
		deadline = w.frameBy
	}
	if by := w.closeBy.Load(); by != 0 && by < deadline {
		deadline = by
	}
	_ = w.Conn.SetReadDeadline(time.Unix(0, deadline))
	// endReadsBy may have run between the Load and the Set above.
	if by := w.closeBy.Load(); by != 0 && by < deadline {
		_ = w.Conn.SetReadDeadline(time.Unix(0, by))
	}
	return w.Conn.Read(p)
}

// startFrame starts the clock of a message whose first byte arrived: it
// must be read whole within d (the first fragment's clock runs on through
// the others). The reader clears frameBy when the message is complete.
func (w *wireConn) startFrame(d time.Duration) {
	if w.frameBy == 0 {
		w.frameBy = time.Now().Add(d).UnixNano()
	}
}

// detach makes Close a no-op: x/net closes the connection when its handler
// returns, but the client's own goroutine serves it from then on and closes
// it itself (w.Conn.Close).
func (w *wireConn) detach() { w.detached.Store(true) }

// Close closes the connection unless it was detached (see detach).
func (w *wireConn) Close() error {
	if w.detached.Load() {
		return nil
	}
	return w.Conn.Close()
}

// endReadsBy bounds every read from now on, and the one in progress, by t:
// after the server sends a close frame it waits that long for the peer's.
func (w *wireConn) endReadsBy(t time.Time) {
	w.closeBy.Store(t.UnixNano())
	_ = w.Conn.SetReadDeadline(t)
}

// reset drops the connection at once (TCP RST), discarding unsent data.
func (w *wireConn) reset() {
	if tc, ok := w.Conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = w.Conn.Close()
}

// Write sends p whole, within the write timeout. x/net uses it for the
// handshake response; the client's writer for its batches.
func (w *wireConn) Write(p []byte) (int, error) {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	_ = w.Conn.SetWriteDeadline(time.Now().Add(w.writeTimeout))
	return w.Conn.Write(p)
}

// maxFrameHeader is the longest server frame header (no mask).
const maxFrameHeader = 10

// appendFrame appends one unmasked, final server frame.
func appendFrame(b []byte, opcode byte, payload []byte) []byte {
	n := len(payload)
	switch {
	case n <= 125:
		b = append(b, 0x80|opcode, byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|opcode, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|opcode, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, payload...)
}

// closePayload is a close frame's body: the code, then a short reason
// (control frames carry at most 125 bytes).
func closePayload(code uint16, reason string) []byte {
	if len(reason) > 123 {
		reason = reason[:123]
	}
	return append(binary.BigEndian.AppendUint16(nil, code), reason...)
}
