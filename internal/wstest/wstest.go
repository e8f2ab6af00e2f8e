// Package wstest is a raw-frame RFC 6455 WebSocket client for tests. Library
// clients hide close codes, opcodes and pings; this one shows them and can
// send malformed input (binary, oversized, fragmented or control frames).
//
// It is test infrastructure: only _test.go files import it, so importers of
// the chat package never compile it.
package wstest

import (
	"bufio"
	"bytes"
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

// WebSocket opcodes (RFC 6455 section 5.2), for SendFrame and ReadFrame.
const (
	OpContinuation byte = 0x0
	OpText         byte = 0x1
	OpBinary       byte = 0x2
	OpClose        byte = 0x8
	OpPing         byte = 0x9
	OpPong         byte = 0xA
)

const (
	maxFramePayload = 64 << 20         // refuse to buffer larger incoming frames
	writeTimeout    = 10 * time.Second // deadline for each outgoing frame
	dialTimeout     = 10 * time.Second // deadline for dial + handshake
	acceptGUID      = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
)

// Conn is a client-side WebSocket connection speaking raw frames.
//
// It never reads in the background: nothing is read from the socket unless a
// read method (ReadFrame, ReadJSON, Next, ExpectClose) is called. A test of a
// slow client simply stops calling them (use DialWithReadBuffer to also
// shrink the TCP receive buffer so the server's writes block sooner).
//
// Reads must come from one goroutine at a time; sends may run concurrently
// with reads and with each other.
type Conn struct {
	conn net.Conn
	br   *bufio.Reader

	wmu sync.Mutex // serialises frame writes (sends and automatic pongs)

	readErr   error // sticky: the stream ended or a frame was cut by a timeout
	closeOnce sync.Once

	// NoPong disables the automatic pong reply; pings are then returned by
	// ReadFrame (and skipped by ReadJSON and Next).
	NoPong bool
	// Presence keeps the chat server's presence announcements (user_joined,
	// user_left frames), which every read skips otherwise: they come when
	// other users come and go, and most tests are about something else.
	Presence bool
	// Skipped holds the JSON frames that Next passed over, oldest first. A
	// test may inspect or reset it.
	Skipped []map[string]any
	// CloseReason is the reason of the last close frame seen by ReadJSON,
	// Next or ExpectClose.
	CloseReason string
}

// CloseError is returned by ReadJSON when the server sent a close frame.
// Code is 1005 when the frame had no status code.
type CloseError struct {
	Code   uint16
	Reason string
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("websocket closed by peer: code %d, reason %q", e.Code, e.Reason)
}

// Dial dials url (ws://host:port/path?query) and performs the RFC 6455
// handshake, sending hdr (Origin, Cookie, Host, ...) with the request. It
// returns the HTTP status code; unless it is 101 the *Conn is nil and err
// describes the response. On success the connection is closed at t.Cleanup.
func Dial(t testing.TB, url string, hdr http.Header) (*Conn, int, error) {
	t.Helper()
	return DialWithReadBuffer(t, url, hdr, 0)
}

// DialWithReadBuffer is Dial, and when readBuffer > 0 it first sets the TCP
// socket's receive buffer (SO_RCVBUF) to readBuffer bytes, before the
// handshake, so a client that stops reading fills up quickly. The kernel may
// round the value (Linux doubles it and enforces a minimum).
func DialWithReadBuffer(t testing.TB, rawURL string, hdr http.Header, readBuffer int) (*Conn, int, error) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, 0, fmt.Errorf("wstest.Dial: parse %q: %w", rawURL, err)
	}
	if u.Scheme != "ws" && u.Scheme != "http" {
		return nil, 0, fmt.Errorf("wstest.Dial: scheme %q not supported (want ws://)", u.Scheme)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	conn, err := net.DialTimeout("tcp", addr, dialTimeout)
	if err != nil {
		return nil, 0, fmt.Errorf("wstest.Dial: %w", err)
	}
	if readBuffer > 0 {
		if tcp, ok := conn.(*net.TCPConn); ok {
			if err := tcp.SetReadBuffer(readBuffer); err != nil {
				conn.Close()
				return nil, 0, fmt.Errorf("wstest.Dial: SetReadBuffer(%d): %w", readBuffer, err)
			}
		}
	}
	_ = conn.SetDeadline(time.Now().Add(dialTimeout))

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
		return nil, 0, fmt.Errorf("wstest.Dial: write handshake: %w", err)
	}

	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet, URL: u})
	if err != nil {
		conn.Close()
		return nil, 0, fmt.Errorf("wstest.Dial: read handshake response: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		conn.Close()
		return nil, resp.StatusCode, fmt.Errorf("wstest.Dial: handshake status %s, body %q", resp.Status, body)
	}
	sum := sha1.Sum([]byte(key + acceptGUID))
	wantAccept := base64.StdEncoding.EncodeToString(sum[:])
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != wantAccept {
		conn.Close()
		return nil, resp.StatusCode, fmt.Errorf("wstest.Dial: Sec-WebSocket-Accept %q, want %q", got, wantAccept)
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		conn.Close()
		return nil, resp.StatusCode, fmt.Errorf("wstest.Dial: Upgrade header %q", resp.Header.Get("Upgrade"))
	}
	_ = conn.SetDeadline(time.Time{})
	c := &Conn{conn: conn, br: br}
	t.Cleanup(c.Close)
	return c, resp.StatusCode, nil
}

// MustDial is Dial that fails the test unless the server answers 101.
func MustDial(t testing.TB, url string, hdr http.Header) *Conn {
	t.Helper()
	c, status, err := Dial(t, url, hdr)
	if err != nil {
		t.Fatalf("wstest.MustDial %s: status %d: %v", url, status, err)
	}
	return c
}

// Close closes the TCP connection (no close frame). It is idempotent.
func (c *Conn) Close() {
	c.closeOnce.Do(func() { _ = c.conn.Close() })
}

// SendText sends s as one masked text frame.
func (c *Conn) SendText(s string) error {
	return c.SendFrame(OpText, []byte(s), true)
}

// SendJSON marshals v and sends it as one text frame.
func (c *Conn) SendJSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("SendJSON: %w", err)
	}
	return c.SendFrame(OpText, b, true)
}

// SendClose sends a close frame with code and reason (no reply is awaited).
func (c *Conn) SendClose(code uint16, reason string) error {
	p := binary.BigEndian.AppendUint16(nil, code)
	return c.SendFrame(OpClose, append(p, reason...), true)
}

// SendFrame sends one masked frame with any opcode (0-15) and payload size,
// control frames included, without validating them: good for bad-input tests
// (binary, oversized, fragmented, ping, close). Each frame is written with a
// 10 s write deadline.
func (c *Conn) SendFrame(opcode byte, payload []byte, fin bool) error {
	return c.SendFrameWith(opcode, payload, fin, FrameOptions{})
}

// ReadFrame reads the next frame, waiting at most timeout. Server pings are
// answered with a pong and skipped unless c.NoPong is set; every other frame
// is returned as is (opcode and unmasked payload).
// A timeout before any byte of a frame arrived leaves the connection usable;
// errors.Is(err, os.ErrDeadlineExceeded) reports it.
func (c *Conn) ReadFrame(timeout time.Duration) (opcode byte, payload []byte, err error) {
	op, _, p, err := c.readFrame(time.Now().Add(timeout))
	return op, p, err
}

// readFrame reads one frame before deadline, answering pings (see ReadFrame).
func (c *Conn) readFrame(deadline time.Time) (op byte, fin bool, payload []byte, err error) {
	for {
		if c.readErr != nil {
			return 0, false, nil, c.readErr
		}
		_ = c.conn.SetReadDeadline(deadline)
		h, err := c.br.Peek(2)
		if err != nil {
			return 0, false, nil, c.readFailed(err, false)
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
			return 0, false, nil, c.readFailed(err, false)
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
		if n > maxFramePayload {
			return 0, false, nil, c.readFailed(fmt.Errorf("wstest: incoming frame payload of %d bytes is over the %d limit", n, maxFramePayload), true)
		}
		payload = make([]byte, n)
		if _, err := io.ReadFull(c.br, payload); err != nil {
			return 0, false, nil, c.readFailed(err, true)
		}
		if masked {
			for i := range payload {
				payload[i] ^= mask[i%4]
			}
		}
		op, fin = b0&0x0f, b0&0x80 != 0
		if op == OpPing && !c.NoPong {
			_ = c.SendFrame(OpPong, payload, true) // a failed write shows up on the next read
			continue
		}
		if op == OpText && fin && !c.Presence && isPresenceNotice(payload) {
			continue
		}
		return op, fin, payload, nil
	}
}

// readFailed records err as sticky unless it is a timeout that struck
// before any byte of the frame was consumed.
func (c *Conn) readFailed(err error, midFrame bool) error {
	if midFrame || !errors.Is(err, os.ErrDeadlineExceeded) {
		if midFrame && errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("wstest: timed out in the middle of a frame, stream unusable: %w", err)
		}
		c.readErr = err
	}
	return err
}

// parseClose decodes a close frame payload.
func parseClose(p []byte) *CloseError {
	switch len(p) {
	case 0:
		return &CloseError{Code: 1005}
	case 1:
		return &CloseError{Code: 1002, Reason: "wstest: malformed close payload of 1 byte"}
	}
	return &CloseError{Code: binary.BigEndian.Uint16(p), Reason: string(p[2:])}
}

// ReadJSON returns the next text message (fragments joined) decoded into a
// map, within timeout overall. Pings and pongs are skipped. A close frame
// gives a *CloseError; a binary frame, invalid JSON or a timeout give other
// errors.
func (c *Conn) ReadJSON(timeout time.Duration) (map[string]any, error) {
	return c.readJSON(time.Now().Add(timeout))
}

func (c *Conn) readJSON(deadline time.Time) (map[string]any, error) {
	var msg []byte
	inText := false
	for {
		op, fin, p, err := c.readFrame(deadline)
		if err != nil {
			return nil, err
		}
		switch op {
		case OpText:
			if inText {
				return nil, errors.New("wstest: new text frame inside a fragmented message")
			}
			msg, inText = p, true
		case OpContinuation:
			if !inText {
				return nil, fmt.Errorf("wstest: continuation frame outside a text message (%d bytes)", len(p))
			}
			msg = append(msg, p...)
		case OpClose:
			ce := parseClose(p)
			c.CloseReason = ce.Reason
			return nil, ce
		case OpPing, OpPong:
			continue
		case OpBinary:
			return nil, fmt.Errorf("wstest: unexpected binary frame %q", p)
		default:
			return nil, fmt.Errorf("wstest: unexpected frame opcode %#x payload %q", op, p)
		}
		if !fin {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(msg, &m); err != nil {
			return nil, fmt.Errorf("wstest: text frame %q is not a JSON object: %w", msg, err)
		}
		return m, nil
	}
}

// Next returns the next JSON frame whose "type" is typ, within timeout
// overall. Frames of other types are appended to c.Skipped. A close frame, a
// read error or the timeout fail the test with the frames seen meanwhile.
// Like t.Fatalf, call it from the test goroutine only.
func (c *Conn) Next(t testing.TB, typ string, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var seen []string
	for {
		m, err := c.readJSON(deadline)
		if err != nil {
			t.Fatalf("waiting %v for a %q frame: %v; frames skipped meanwhile: %v", timeout, typ, err, seen)
			return nil
		}
		if m["type"] == typ {
			return m
		}
		c.Skipped = append(c.Skipped, m)
		b, _ := json.Marshal(m)
		seen = append(seen, string(b))
	}
}

// ExpectClose reads and discards frames until a close frame arrives and
// returns its code (1005 if it had none; the reason goes to c.CloseReason).
// If the connection ends without a close frame it returns 1006. A timeout
// fails the test. Call it from the test goroutine only.
func (c *Conn) ExpectClose(t testing.TB, timeout time.Duration) uint16 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var seen []string
	for {
		op, _, p, err := c.readFrame(deadline)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("waiting %v for a close frame: %v; frames seen meanwhile: %v", timeout, err, seen)
			}
			return 1006
		}
		if op == OpClose {
			ce := parseClose(p)
			c.CloseReason = ce.Reason
			return ce.Code
		}
		seen = append(seen, fmt.Sprintf("op=%#x %q", op, p))
	}
}

// isPresenceNotice reports whether a text frame is a user_joined or
// user_left announcement.
func isPresenceNotice(p []byte) bool {
	return bytes.HasPrefix(p, []byte(`{"type":"user_joined",`)) || bytes.HasPrefix(p, []byte(`{"type":"user_left",`))
}
