package e2e

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
	"testing"
	"time"
)

// wsConn is a minimal RFC 6455 client: enough to see close codes, which
// library clients hide. Text frames only; pings are answered.
type wsConn struct {
	t    *testing.T
	name string
	c    net.Conn
	br   *bufio.Reader
}

// closeError is returned by read once the server sent a close frame.
type closeError struct {
	code   int
	reason string
}

func (e *closeError) Error() string { return fmt.Sprintf("websocket closed: %d %q", e.code, e.reason) }

// dialWS opens a WebSocket to rawURL (ws://host:port/path?query) with the
// page's Origin, as a browser would.
func dialWS(t *testing.T, name, rawURL string) *wsConn {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatalf("%s: dial %s: %v", name, u.Host, err)
	}
	t.Cleanup(func() { c.Close() })
	var nonce [16]byte
	rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	req, _ := http.NewRequest(http.MethodGet, "http://"+u.Host+u.RequestURI(), nil)
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Sec-WebSocket-Key", key)
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Origin", "http://"+u.Host)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := req.Write(c); err != nil {
		t.Fatalf("%s: handshake: %v", name, err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatalf("%s: handshake: %v", name, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		t.Fatalf("%s: handshake: status %d: %s", name, resp.StatusCode, body)
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if got, want := resp.Header.Get("Sec-WebSocket-Accept"), base64.StdEncoding.EncodeToString(sum[:]); got != want {
		t.Fatalf("%s: Sec-WebSocket-Accept = %q, want %q", name, got, want)
	}
	c.SetDeadline(time.Time{})
	return &wsConn{t: t, name: name, c: c, br: br}
}

func (w *wsConn) writeFrame(opcode byte, payload []byte) error {
	hdr := []byte{0x80 | opcode}
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n <= 0xffff:
		hdr = append(hdr, 0x80|126)
		hdr = binary.BigEndian.AppendUint16(hdr, uint16(n))
	default:
		hdr = append(hdr, 0x80|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	var mask [4]byte
	rand.Read(mask[:])
	hdr = append(hdr, mask[:]...)
	masked := make([]byte, len(payload))
	for i, b := range payload {
		masked[i] = b ^ mask[i%4]
	}
	w.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := w.c.Write(append(hdr, masked...))
	return err
}

// sendJSON writes one text frame.
func (w *wsConn) sendJSON(v any) {
	w.t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		w.t.Fatal(err)
	}
	if err := w.writeFrame(0x1, data); err != nil {
		w.t.Fatalf("%s: write: %v", w.name, err)
	}
}

// read returns the next text message; a close frame gives a *closeError.
func (w *wsConn) read(deadline time.Time) ([]byte, error) {
	w.c.SetReadDeadline(deadline)
	var msg []byte
	for {
		var h [2]byte
		if _, err := io.ReadFull(w.br, h[:]); err != nil {
			return nil, err
		}
		fin, opcode := h[0]&0x80 != 0, h[0]&0x0f
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(w.br, b[:]); err != nil {
				return nil, err
			}
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(w.br, b[:]); err != nil {
				return nil, err
			}
			n = binary.BigEndian.Uint64(b[:])
		}
		if n > 1<<20 {
			return nil, fmt.Errorf("frame of %d bytes", n)
		}
		var mask []byte
		if h[1]&0x80 != 0 {
			mask = make([]byte, 4)
			if _, err := io.ReadFull(w.br, mask); err != nil {
				return nil, err
			}
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(w.br, payload); err != nil {
			return nil, err
		}
		if mask != nil {
			for i := range payload {
				payload[i] ^= mask[i%4]
			}
		}
		switch opcode {
		case 0x9: // ping
			w.writeFrame(0xA, payload)
		case 0xA: // pong
		case 0x8: // close
			ce := &closeError{code: 1005}
			if len(payload) >= 2 {
				ce.code = int(binary.BigEndian.Uint16(payload))
				ce.reason = string(payload[2:])
			}
			w.writeFrame(0x8, payload[:min(2, len(payload))])
			return nil, ce
		case 0x1, 0x0:
			msg = append(msg, payload...)
			if fin {
				return msg, nil
			}
		default:
			return nil, fmt.Errorf("unexpected opcode %#x", opcode)
		}
	}
}

// frame is a server frame, decoded loosely.
type frame struct {
	Type     string `json:"type"`
	Room     string `json:"room"`
	ID       string `json:"id"`
	User     string `json:"user"`
	Text     string `json:"text"`
	TS       int64  `json:"ts"`
	Instance string `json:"instance"`
	Ref      string `json:"ref"`
	Code     string `json:"code"`
	Message  string `json:"message"`
	Resumed  bool   `json:"resumed"`
}

// expect reads frames until one of the given type arrives (within 10 s);
// an error frame or a close fails the test.
func (w *wsConn) expect(typ string) frame {
	w.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, err := w.read(deadline)
		if err != nil {
			w.t.Fatalf("%s: waiting for a %q frame: %v", w.name, typ, err)
		}
		var f frame
		if err := json.Unmarshal(data, &f); err != nil {
			w.t.Fatalf("%s: bad frame %q: %v", w.name, data, err)
		}
		if f.Type == typ {
			return f
		}
		if f.Type == "error" {
			w.t.Fatalf("%s: error frame while waiting for %q: %s", w.name, typ, data)
		}
		w.t.Logf("%s: skipping %s", w.name, data)
	}
}

// expectClose reads until the server closes and returns the close code.
func (w *wsConn) expectClose(within time.Duration) int {
	w.t.Helper()
	deadline := time.Now().Add(within)
	for {
		data, err := w.read(deadline)
		var ce *closeError
		switch {
		case errors.As(err, &ce):
			return ce.code
		case err != nil:
			w.t.Fatalf("%s: waiting for a close frame: %v", w.name, err)
		}
		w.t.Logf("%s: skipping %s", w.name, data)
	}
}
