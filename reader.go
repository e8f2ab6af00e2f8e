package chat

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// frameHeader is a client frame's header (RFC 6455 §5.2).
type frameHeader struct {
	fin    bool
	rsv    byte // RSV1-3, in place (0x70): no extension is negotiated, so 0
	op     byte
	masked bool
	length uint64 // as sent: a set most significant bit is a protocol error
}

// peekHeader waits for the next frame's header and decodes it without
// consuming it: x/net's frame reader then reads it from the buffer without
// blocking, so a read that times out never leaves a header half read.
func peekHeader(br *bufio.Reader) (frameHeader, error) {
	b, err := br.Peek(2)
	if err != nil {
		return frameHeader{}, err
	}
	h := frameHeader{fin: b[0]&0x80 != 0, rsv: b[0] & 0x70, op: b[0] & 0x0f, masked: b[1]&0x80 != 0}
	n := 2
	switch b[1] & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if h.masked {
		n += 4
	}
	if b, err = br.Peek(n); err != nil {
		return frameHeader{}, err
	}
	switch l := b[1] & 0x7f; l {
	case 126:
		h.length = uint64(binary.BigEndian.Uint16(b[2:]))
	case 127:
		h.length = binary.BigEndian.Uint64(b[2:])
	default:
		h.length = uint64(l)
	}
	return h, nil
}

// reader is the state of a connection's frame reading, on the reader
// goroutine only. x/net parses each frame (NewFrameReader: header, then the
// unmasked payload); the reader sees every frame, control frames included,
// and decides what each one costs and means. It never lets x/net handle a
// frame (HandleFrame, Codec.Receive): x/net would answer pings unseen by the
// rate limit, write close frames of its own, and hand fragments and invalid
// UTF-8 over as messages.
type reader struct {
	c       *client
	payload io.Reader // the current frame's unread payload, nil between frames
	msg     []byte    // the text message being reassembled from fragments
	size    uint64    // bytes of the open message so far (a binary one is not kept)
	msgOp   byte      // opText or opBinary while a fragmented message is open, else 0
	refused bool      // a frame of the open message was over the rate limit
}

// readFrames reads and acts on the client's frames until the connection
// ends, and returns why: io.EOF after the client's close frame (or a clean
// TCP end), another error otherwise.
func (c *client) readFrames(ctx context.Context) error {
	r := reader{c: c}
	for {
		// Wait for the next frame here, shallow on the stack, rather than
		// deep inside x/net: the runtime then shrinks an idle connection's
		// stack to 4 KiB instead of keeping 8.
		_, err := c.wire.reader.Peek(1)
		if err == nil {
			c.wire.startFrame(c.h.cfg.frameTimeout)
			err = r.next(ctx)
		}
		if err != nil {
			return r.end(err)
		}
	}
}

// end finishes reading after err: a frame timeout fails the connection,
// and a failed connection is hung up.
func (r *reader) end(err error) error {
	if r.expired(err) {
		err = r.fail(closePolicy, "message not completed within "+r.c.h.cfg.frameTimeout.String())
	}
	if err == errFailed {
		return r.c.hangUp()
	}
	return err
}

// errFailed: the reader failed the connection (reader.fail).
var errFailed = errors.New("connection failed: closed by the server")

// errFlood: a client kept flooding after the server's close frame.
var errFlood = errors.New("flooding after the close frame")

// expired reports whether err is the frame timeout striking.
func (r *reader) expired(err error) bool {
	w := r.c.wire
	return w.frameBy != 0 && errors.Is(err, os.ErrDeadlineExceeded) && time.Now().UnixNano() >= w.frameBy && !r.c.isClosing()
}

// next reads one frame and acts on it.
func (r *reader) next(ctx context.Context) error {
	c := r.c
	h, err := peekHeader(c.wire.reader)
	if err != nil {
		return err
	}
	fr, err := c.ws.NewFrameReader() // the header is buffered: no wait
	if err != nil {
		return err
	}
	r.payload = fr
	if c.isClosing() {
		// Our close frame is out: discard everything until the peer's
		// close frame or the close grace, as long as the client does not
		// flood (parsing frames is what a flood costs).
		c.wire.frameBy = 0
		if _, flood := c.limiter.take(time.Now()); flood {
			return errFlood
		}
		if err := r.skip(); err != nil {
			return err
		}
		if h.op == opClose {
			return io.EOF
		}
		return nil
	}
	switch {
	case h.rsv != 0:
		return r.fail(closeProtocol, "reserved bits set without a negotiated extension")
	case !h.masked:
		return r.fail(closeProtocol, "client frames must be masked")
	case h.length>>63 != 0:
		return r.fail(closeProtocol, "frame length with its most significant bit set")
	}
	if h.op >= opClose {
		return r.control(h)
	}
	switch h.op {
	case opText, opBinary:
		if r.msgOp != 0 {
			return r.fail(closeProtocol, "new message before the fragmented one ended")
		}
		r.msgOp = h.op
	case opContinuation:
		if r.msgOp == 0 {
			return r.fail(closeProtocol, "continuation frame without a message to continue")
		}
	default:
		return r.fail(closeProtocol, "unknown opcode "+strconv.Itoa(int(h.op)))
	}
	ok, flood := c.limiter.take(time.Now())
	if flood {
		return r.fail(closePolicy, r.floodReason())
	}
	r.refused = r.refused || !ok
	limit := c.h.cfg.frameLimit()
	if r.size += h.length; r.size > uint64(limit) {
		what := "frame"
		if h.op == opContinuation {
			what = "fragmented message"
		}
		// Not a protocol error: the frame is drained, like those that
		// follow, until the client's close frame or the close grace.
		c.closeWith(closeTooBig, what+" larger than "+strconv.Itoa(limit)+" bytes", false)
		return r.skip()
	}
	if r.msgOp == opBinary {
		err = r.skip() // refused whole at its end: never buffered
	} else {
		r.msg, err = r.readPayload(r.msg, int(h.length))
	}
	if err != nil || !h.fin {
		return err
	}

	// The message is complete.
	c.wire.frameBy = 0
	op, data, refused := r.msgOp, r.msg, r.refused
	r.msg, r.size, r.msgOp, r.refused = nil, 0, 0, false
	switch {
	case op == opBinary && refused:
		c.sendError(codeRateLimited, "too many frames; slow down", "")
	case op == opBinary:
		c.sendError(codeBadRequest, "binary frames are not supported; send JSON text frames", "")
	case !utf8.Valid(data):
		return r.fail(closeBadData, "text message is not valid UTF-8")
	default:
		c.handle(ctx, data, refused)
	}
	return nil
}

// control acts on a ping, pong or close frame. Pings and pongs take a token
// of the rate limit like every other frame; a ping is answered through the
// writer, after what it is sending, so that a pong never splits a batch and
// never follows our close frame.
func (r *reader) control(h frameHeader) error {
	c := r.c
	switch {
	case h.op > opPong:
		return r.fail(closeProtocol, "unknown opcode "+strconv.Itoa(int(h.op)))
	case !h.fin:
		return r.fail(closeProtocol, "fragmented control frame")
	case h.length > maxControlPayload:
		return r.fail(closeProtocol, "control frame payload longer than 125 bytes")
	}
	p, err := r.readPayload(nil, int(h.length))
	if err != nil {
		return err
	}
	if r.msgOp == 0 {
		c.wire.frameBy = 0
	}
	if h.op == opClose {
		if code, reason := checkClose(p); code != 0 {
			return r.fail(code, reason)
		}
		return io.EOF // finish answers it
	}
	ok, flood := c.limiter.take(time.Now())
	if flood {
		return r.fail(closePolicy, r.floodReason())
	}
	if h.op == opPing {
		// Over the limit, the pong waits for the writer's next batch.
		c.answerPing(p, ok)
	}
	return nil
}

// readPayload appends the current frame's n-byte payload to b.
func (r *reader) readPayload(b []byte, n int) ([]byte, error) {
	b = slices.Grow(b, n)
	if _, err := io.ReadFull(r.payload, b[len(b):len(b)+n]); err != nil {
		return b, err
	}
	r.payload = nil
	return b[:len(b)+n], nil
}

// skip discards the rest of the current frame's payload.
func (r *reader) skip() error {
	if _, err := io.Copy(io.Discard, r.payload); err != nil {
		return err
	}
	r.payload = nil
	return nil
}

// fail closes the connection with code and reason ("Fail the WebSocket
// Connection", RFC 6455 §7.1.7) and returns errFailed: the reader parses
// nothing more (readFrames hangs up).
func (r *reader) fail(code uint16, reason string) error {
	r.c.closeWith(code, reason, false)
	r.c.wire.frameBy = 0
	return errFailed
}

// hangUp ends a connection the reader failed. Once the writer has sent the
// close frame, the server's side of TCP is shut, so that the client reads
// the close frame and then the end of the stream (RFC 6455 §7.1.1: the
// server closes first). Whatever the client still sends, its close frame
// included, is discarded unparsed, until it closes its side: io.EOF, then
// a normal close. A client that sends more than hangUpDrain bytes, or does
// not close within the close grace, is reset (the error is returned).
func (c *client) hangUp() error {
	c.mu.Lock()
	wait := c.writing // closing is set: no writer starts any more
	c.mu.Unlock()
	if wait {
		<-c.writerDone
	}
	if cw, ok := c.wire.Conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_, _ = c.wire.reader.Discard(c.wire.reader.Buffered())
	n, err := io.Copy(io.Discard, io.LimitReader(c.wire, hangUpDrain+1))
	switch {
	case err != nil:
		return err
	case n > hangUpDrain:
		return errFlood
	}
	return io.EOF
}

// hangUpDrain is how much a failed client may still send, in-flight
// messages and its close frame, before it is reset.
const hangUpDrain = 64 << 10

func (r *reader) floodReason() string {
	l := &r.c.limiter
	return "flooding: more than " + strconv.Itoa(int(l.burst)) + " frames over the rate limit of " +
		strconv.FormatFloat(l.rate, 'g', -1, 64) + "/s within a second"
}

// maxControlPayload is the longest payload of a ping, pong or close frame.
const maxControlPayload = 125

// checkClose validates a client's close frame payload (RFC 6455 §5.5.1,
// §7.4): empty, or a code a peer may send followed by a UTF-8 reason. It
// returns the close code to fail with, or 0.
func checkClose(p []byte) (uint16, string) {
	switch {
	case len(p) == 0:
		return 0, ""
	case len(p) == 1:
		return closeProtocol, "close frame with a 1-byte payload"
	}
	code := binary.BigEndian.Uint16(p)
	if !validCloseCode(code) {
		return closeProtocol, "invalid close code " + strconv.Itoa(int(code))
	}
	if !utf8.Valid(p[2:]) {
		return closeBadData, "close reason is not valid UTF-8"
	}
	return 0, ""
}

// validCloseCode reports whether a peer may send code in a close frame: the
// codes RFC 6455 and IANA define for use on the wire (1004-1006 and 1015 are
// reserved, 1016-2999 unassigned) and the registered and private ranges.
func validCloseCode(code uint16) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	default:
		return code >= 3000 && code <= 4999
	}
}
