package chat

// A raw-frame RFC 6455 WebSocket client for tests. Library clients hide close
// codes, opcodes and pings; this one shows them and can send malformed input.

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// WebSocket opcodes and limits used by testWS.
const (
	tcOpContinuation byte = 0x0
	tcOpText         byte = 0x1
	tcOpBinary       byte = 0x2
	tcOpClose        byte = 0x8
	tcOpPing         byte = 0x9
	tcOpPong         byte = 0xA

	tcMaxFramePayload = 64 << 20         // refuse to buffer larger incoming frames
	tcWriteTimeout    = 10 * time.Second // deadline for each outgoing frame
	tcDialTimeout     = 10 * time.Second // deadline for dial + handshake
	tcWSGUID          = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
)

// testWS is a client-side WebSocket connection speaking raw frames.
//
// It never reads in the background: nothing is read from the socket unless a
// read method (readFrame, readJSON, next, expectClose) is called. A test of a
// slow client simply stops calling them (use dialWSWith to also shrink the
// TCP receive buffer so the server's writes block sooner).
//
// Reads must come from one goroutine at a time; sends may run concurrently
// with reads and with each other.
type testWS struct {
	conn net.Conn
	br   *bufio.Reader

	wmu sync.Mutex // serialises frame writes (sends and automatic pongs)

	readErr   error // sticky: the stream ended or a frame was cut by a timeout
	closeOnce sync.Once

	// noPong disables the automatic pong reply; pings are then returned by
	// readFrame (and skipped by readJSON/next).
	noPong bool
	// skipped holds the JSON frames that next passed over, oldest first. A
	// test may inspect or reset it.
	skipped []map[string]any
	// lastFin is the FIN bit of the frame last returned by readFrame.
	lastFin bool
	// closeReason is the reason of the last close frame seen by readJSON,
	// next or expectClose.
	closeReason string
}

// closeError is returned by readJSON when the server sent a close frame.
// Code is 1005 when the frame had no status code.
type closeError struct {
	Code   uint16
	Reason string
}

func (e *closeError) Error() string {
	return fmt.Sprintf("websocket closed by peer: code %d, reason %q", e.Code, e.Reason)
}

// dialWS dials url (ws://host:port/path?query) and performs the RFC 6455
// handshake, sending hdr (Origin, Cookie, Host, ...) with the request. It
// returns the HTTP status code; unless it is 101 the *testWS is nil and err
// describes the response. On success the connection is closed at t.Cleanup.
func dialWS(t testing.TB, url string, hdr http.Header) (*testWS, int, error) {
	t.Helper()
	return dialWSWith(t, url, hdr, 0)
}

// dialWSWith is dialWS, and when readBuffer > 0 it first sets the TCP
// socket's receive buffer (SO_RCVBUF) to readBuffer bytes, before the
// handshake, so a client that stops reading fills up quickly. The kernel may
// round the value (Linux doubles it and enforces a minimum).
func dialWSWith(t testing.TB, rawURL string, hdr http.Header, readBuffer int) (*testWS, int, error) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, 0, fmt.Errorf("dialWS: parse %q: %w", rawURL, err)
	}
	if u.Scheme != "ws" && u.Scheme != "http" {
		return nil, 0, fmt.Errorf("dialWS: scheme %q not supported (want ws://)", u.Scheme)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	conn, err := net.DialTimeout("tcp", addr, tcDialTimeout)
	if err != nil {
		return nil, 0, fmt.Errorf("dialWS: %w", err)
	}
	if readBuffer > 0 {
		if tcp, ok := conn.(*net.TCPConn); ok {
			if err := tcp.SetReadBuffer(readBuffer); err != nil {
				conn.Close()
				return nil, 0, fmt.Errorf("dialWS: SetReadBuffer(%d): %w", readBuffer, err)
			}
		}
	}
	_ = conn.SetDeadline(time.Now().Add(tcDialTimeout))

	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	host := u.Host
	if h := hdr.Get("Host"); h != "" {
		host = h
	}
	var req strings.Builder
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\n", u.RequestURI(), host)
	req.WriteString("Upgrade: websocket\r\nConnection: Upgrade\r\n")
	fmt.Fprintf(&req, "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", key)
	extra := hdr.Clone()
	if extra != nil {
		extra.Del("Host")
		_ = extra.Write(&req)
	}
	req.WriteString("\r\n")
	if _, err := io.WriteString(conn, req.String()); err != nil {
		conn.Close()
		return nil, 0, fmt.Errorf("dialWS: write handshake: %w", err)
	}

	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet, URL: u})
	if err != nil {
		conn.Close()
		return nil, 0, fmt.Errorf("dialWS: read handshake response: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		conn.Close()
		return nil, resp.StatusCode, fmt.Errorf("dialWS: handshake status %s, body %q", resp.Status, body)
	}
	sum := sha1.Sum([]byte(key + tcWSGUID))
	wantAccept := base64.StdEncoding.EncodeToString(sum[:])
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != wantAccept {
		conn.Close()
		return nil, resp.StatusCode, fmt.Errorf("dialWS: Sec-WebSocket-Accept %q, want %q", got, wantAccept)
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		conn.Close()
		return nil, resp.StatusCode, fmt.Errorf("dialWS: Upgrade header %q", resp.Header.Get("Upgrade"))
	}
	_ = conn.SetDeadline(time.Time{})
	c := &testWS{conn: conn, br: br}
	t.Cleanup(c.close)
	return c, resp.StatusCode, nil
}

// mustDialWS dials url with no extra headers and fails the test unless the
// server answers 101. The connection is closed at t.Cleanup.
func mustDialWS(t testing.TB, url string) *testWS {
	t.Helper()
	c, status, err := dialWS(t, url, nil)
	if err != nil {
		t.Fatalf("mustDialWS %s: status %d: %v", url, status, err)
	}
	return c
}

// close closes the TCP connection (no close frame). It is idempotent.
func (c *testWS) close() {
	c.closeOnce.Do(func() { _ = c.conn.Close() })
}

// sendText sends s as one masked text frame.
func (c *testWS) sendText(s string) error {
	return c.sendFrame(tcOpText, []byte(s), true)
}

// sendJSON marshals v and sends it as one text frame.
func (c *testWS) sendJSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("sendJSON: %w", err)
	}
	return c.sendFrame(tcOpText, b, true)
}

// sendClose sends a close frame with code and reason (no reply is awaited).
func (c *testWS) sendClose(code uint16, reason string) error {
	p := binary.BigEndian.AppendUint16(nil, code)
	return c.sendFrame(tcOpClose, append(p, reason...), true)
}

// sendFrame sends one masked frame with any opcode (0-15) and payload size,
// control frames included, without validating them: good for bad-input tests
// (binary, oversized, fragmented, ping, close). Each frame is written with a
// 10 s write deadline.
func (c *testWS) sendFrame(opcode byte, payload []byte, fin bool) error {
	if opcode > 0x0f {
		return fmt.Errorf("sendFrame: opcode %#x does not fit in 4 bits", opcode)
	}
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	n := len(payload)
	frame := make([]byte, 0, 14+n)
	switch {
	case n < 126:
		frame = append(frame, b0, 0x80|byte(n))
	case n <= 0xffff:
		frame = append(frame, b0, 0x80|126)
		frame = binary.BigEndian.AppendUint16(frame, uint16(n))
	default:
		frame = append(frame, b0, 0x80|127)
		frame = binary.BigEndian.AppendUint64(frame, uint64(n))
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	frame = append(frame, mask[:]...)
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(tcWriteTimeout))
	_, err := c.conn.Write(frame)
	return err
}

// readFrame reads the next frame, waiting at most timeout. Server pings are
// answered with a pong and skipped unless c.noPong is set; every other frame
// is returned as is (opcode and unmasked payload; c.lastFin has its FIN bit).
// A timeout before any byte of a frame arrived leaves the connection usable;
// errors.Is(err, os.ErrDeadlineExceeded) reports it.
func (c *testWS) readFrame(timeout time.Duration) (opcode byte, payload []byte, err error) {
	op, fin, p, err := c.tcReadFrame(time.Now().Add(timeout))
	if err == nil {
		c.lastFin = fin
	}
	return op, p, err
}

// tcReadFrame reads one frame before deadline, answering pings (see readFrame).
func (c *testWS) tcReadFrame(deadline time.Time) (op byte, fin bool, payload []byte, err error) {
	for {
		if c.readErr != nil {
			return 0, false, nil, c.readErr
		}
		_ = c.conn.SetReadDeadline(deadline)
		h, err := c.br.Peek(2)
		if err != nil {
			return 0, false, nil, c.tcReadFailed(err, false)
		}
		b0, b1 := h[0], h[1]
		hlen := 2
		switch b1 & 0x7f {
		case 126:
			hlen += 2
		case 127:
			hlen += 8
		}
		masked := b1&0x80 != 0
		if masked {
			hlen += 4
		}
		if h, err = c.br.Peek(hlen); err != nil {
			return 0, false, nil, c.tcReadFailed(err, false)
		}
		var n uint64
		switch b1 & 0x7f {
		case 126:
			n = uint64(binary.BigEndian.Uint16(h[2:4]))
		case 127:
			n = binary.BigEndian.Uint64(h[2:10])
		default:
			n = uint64(b1 & 0x7f)
		}
		var mask [4]byte
		if masked {
			copy(mask[:], h[hlen-4:hlen])
		}
		_, _ = c.br.Discard(hlen)
		if n > tcMaxFramePayload {
			return 0, false, nil, c.tcReadFailed(fmt.Errorf("testWS: incoming frame payload of %d bytes is over the %d limit", n, tcMaxFramePayload), true)
		}
		payload = make([]byte, n)
		if _, err := io.ReadFull(c.br, payload); err != nil {
			return 0, false, nil, c.tcReadFailed(err, true)
		}
		if masked {
			for i := range payload {
				payload[i] ^= mask[i%4]
			}
		}
		op, fin = b0&0x0f, b0&0x80 != 0
		if op == tcOpPing && !c.noPong {
			_ = c.sendFrame(tcOpPong, payload, true) // a failed write shows up on the next read
			continue
		}
		return op, fin, payload, nil
	}
}

// tcReadFailed records err as sticky unless it is a timeout that struck
// before any byte of the frame was consumed.
func (c *testWS) tcReadFailed(err error, midFrame bool) error {
	if midFrame || !errors.Is(err, os.ErrDeadlineExceeded) {
		if midFrame && errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("testWS: timed out in the middle of a frame, stream unusable: %w", err)
		}
		c.readErr = err
	}
	return err
}

// tcParseClose decodes a close frame payload.
func tcParseClose(p []byte) *closeError {
	switch len(p) {
	case 0:
		return &closeError{Code: 1005}
	case 1:
		return &closeError{Code: 1002, Reason: "testWS: malformed close payload of 1 byte"}
	}
	return &closeError{Code: binary.BigEndian.Uint16(p), Reason: string(p[2:])}
}

// readJSON returns the next text message (fragments joined) decoded into a
// map, within timeout overall. Pings and pongs are skipped. A close frame
// gives a *closeError; a binary frame, invalid JSON or a timeout give other
// errors.
func (c *testWS) readJSON(timeout time.Duration) (map[string]any, error) {
	return c.tcReadJSON(time.Now().Add(timeout))
}

func (c *testWS) tcReadJSON(deadline time.Time) (map[string]any, error) {
	var msg []byte
	inText := false
	for {
		op, fin, p, err := c.tcReadFrame(deadline)
		if err != nil {
			return nil, err
		}
		switch op {
		case tcOpText:
			if inText {
				return nil, errors.New("testWS: new text frame inside a fragmented message")
			}
			msg, inText = p, true
		case tcOpContinuation:
			if !inText {
				return nil, fmt.Errorf("testWS: continuation frame outside a text message (%d bytes)", len(p))
			}
			msg = append(msg, p...)
		case tcOpClose:
			ce := tcParseClose(p)
			c.closeReason = ce.Reason
			return nil, ce
		case tcOpPing, tcOpPong:
			continue
		case tcOpBinary:
			return nil, fmt.Errorf("testWS: unexpected binary frame %q", p)
		default:
			return nil, fmt.Errorf("testWS: unexpected frame opcode %#x payload %q", op, p)
		}
		if !fin {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(msg, &m); err != nil {
			return nil, fmt.Errorf("testWS: text frame %q is not a JSON object: %w", msg, err)
		}
		return m, nil
	}
}

// next returns the next JSON frame whose "type" is typ, within timeout
// overall. Frames of other types are appended to c.skipped. A close frame, a
// read error or the timeout fail the test with the frames seen meanwhile.
// Like t.Fatalf, call it from the test goroutine only.
func (c *testWS) next(t testing.TB, typ string, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var seen []string
	for {
		m, err := c.tcReadJSON(deadline)
		if err != nil {
			t.Fatalf("waiting %v for a %q frame: %v; frames skipped meanwhile: %v", timeout, typ, err, seen)
			return nil
		}
		if m["type"] == typ {
			return m
		}
		c.skipped = append(c.skipped, m)
		b, _ := json.Marshal(m)
		seen = append(seen, string(b))
	}
}

// expectClose reads and discards frames until a close frame arrives and
// returns its code (1005 if it had none; the reason goes to c.closeReason).
// If the connection ends without a close frame it returns 1006. A timeout
// fails the test. Call it from the test goroutine only.
func (c *testWS) expectClose(t testing.TB, timeout time.Duration) uint16 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var seen []string
	for {
		op, _, p, err := c.tcReadFrame(deadline)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("waiting %v for a close frame: %v; frames seen meanwhile: %v", timeout, err, seen)
			}
			return 1006
		}
		if op == tcOpClose {
			ce := tcParseClose(p)
			c.closeReason = ce.Reason
			return ce.Code
		}
		seen = append(seen, fmt.Sprintf("op=%#x %q", op, p))
	}
}
