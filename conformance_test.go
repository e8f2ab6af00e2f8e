package chat

// RFC 6455 conformance of the server's reading side, as a table modelled
// on the sections of the Autobahn test suite: 1 framing, 2 pings and pongs,
// 3 reserved bits, 4 opcodes, 5 fragmentation, 6 UTF-8, 7 close handling.
// Each row sends raw bytes and expects, in order, what comes back: a chat
// message relayed through Redis, an error frame, a pong, or a close frame.
// A row that does not end in a close checks that the connection still
// works; a row that does checks that the server sends exactly one close
// frame.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chat/internal/wstest"
)

// expectation is one thing a row expects back, in order.
type expectation struct {
	kind    string // "echo" (a message frame with text), "error" (code), "pong" (payload), "close" (code)
	text    string
	code    uint16
	lastOf  bool   // pong: earlier pongs (for pings answered together) may come first
	maybe   string // close: the echo of a message sent just before may come first, or be lost with the close
	payload []byte
}

func echoed(text string) expectation     { return expectation{kind: "echo", text: text} }
func errored(code string) expectation    { return expectation{kind: "error", text: code} }
func ponged(p []byte) expectation        { return expectation{kind: "pong", payload: p} }
func closedWith(code uint16) expectation { return expectation{kind: "close", code: code} }

// closedAfter is closedWith(code) after a message with text, whose echo
// from Redis may come before the close or not at all.
func closedAfter(text string, code uint16) expectation {
	return expectation{kind: "close", code: code, maybe: text}
}

// conformanceRow is one case: writes are sent one by one (a short pause
// between them, so that the server reads them apart).
type conformanceRow struct {
	id, name string
	writes   [][]byte
	want     []expectation
}

// confRoom is the room of every row. Each row has an instance of its own,
// with its own key prefix, so that a message a row published cannot reach
// another row's connection.
const confRoom = "conf"

// chatMsg is a message frame's JSON with text, padded with spaces to size
// bytes when size is larger.
func chatMsg(text string, size int) []byte {
	b, _ := json.Marshal(map[string]string{"type": "message", "room": confRoom, "text": text})
	if len(b) < size {
		b = append(b, bytes.Repeat([]byte(" "), size-len(b))...)
	}
	return b
}

// rawMsg is a message frame's JSON with text put in as raw bytes, unescaped
// (invalid UTF-8 stays invalid).
func rawMsg(text string) []byte {
	return []byte(`{"type":"message","room":"` + confRoom + `","text":"` + text + `"}`)
}

func frame(op byte, payload []byte, fin bool) []byte {
	return wstest.EncodeFrame(op, payload, fin, wstest.FrameOptions{})
}

func rsvFrame(op byte, payload []byte, rsv byte) []byte {
	return wstest.EncodeFrame(op, payload, true, wstest.FrameOptions{RSV: rsv})
}

func text(payload []byte) []byte { return frame(wstest.OpText, payload, true) }

func closeFrame(code uint16, reason string) []byte {
	return frame(wstest.OpClose, append(binary.BigEndian.AppendUint16(nil, code), reason...), true)
}

// cat joins frames into one write.
func cat(frames ...[]byte) []byte { return bytes.Join(frames, nil) }

// chop splits b into writes of n bytes.
func chop(b []byte, n int) [][]byte {
	var out [][]byte
	for len(b) > n {
		out = append(out, b[:n])
		b = b[n:]
	}
	return append(out, b)
}

// fragments splits payload into n text fragments (a text frame, then
// continuation frames, the last one final), joined in one write.
func fragments(payload []byte, n int) []byte {
	size := (len(payload) + n - 1) / n
	var out []byte
	for i := 0; i < n; i++ {
		op := wstest.OpContinuation
		if i == 0 {
			op = wstest.OpText
		}
		part := payload[min(i*size, len(payload)):min((i+1)*size, len(payload))]
		out = append(out, frame(op, part, i == n-1)...)
	}
	return out
}

// splitInside is b as two text fragments split between the first and the
// second byte of the first r in it.
func splitInside(b []byte, r string) []byte {
	i := bytes.Index(b, []byte(r)) + 1
	return cat(frame(wstest.OpText, b[:i], false), frame(wstest.OpContinuation, b[i:], true))
}

func conformanceRows() []conformanceRow {
	cfg := defaultConfig()
	limit := cfg.frameLimit()
	w := func(b ...[]byte) [][]byte { return b }
	bytesOf := func(n int, c byte) []byte { return bytes.Repeat([]byte{c}, n) }
	binaryPing := []byte{0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff}

	rows := []conformanceRow{
		// 1 Framing.
		{"1.1.1", "text, empty payload", w(text(nil)), []expectation{errored(codeBadRequest)}},
		{"1.1.2", "text, 125 bytes", w(text(chatMsg("1.1.2", 125))), []expectation{echoed("1.1.2")}},
		{"1.1.3", "text, 126 bytes (16-bit length)", w(text(chatMsg("1.1.3", 126))), []expectation{echoed("1.1.3")}},
		{"1.1.4", "text, 127 bytes", w(text(chatMsg("1.1.4", 127))), []expectation{echoed("1.1.4")}},
		{"1.1.5", "text, 65535 bytes: over the frame limit", w(text(chatMsg("1.1.5", 65535))), []expectation{closedWith(closeTooBig)}},
		{"1.1.6", "text, exactly the frame limit", w(text(chatMsg("1.1.6", limit))), []expectation{echoed("1.1.6")}},
		{"1.1.7", "text, the frame limit + 1", w(text(chatMsg("1.1.7", limit+1))), []expectation{closedWith(closeTooBig)}},
		{"1.1.8", "text, the frame limit, in writes of 997 bytes", chop(text(chatMsg("1.1.8", limit)), 997), []expectation{echoed("1.1.8")}},
		{"1.1.9", "text, header and payload byte by byte", chop(text(chatMsg("1.1.9", 0)), 1), []expectation{echoed("1.1.9")}},
		{"1.2.1", "binary, empty payload", w(frame(wstest.OpBinary, nil, true)), []expectation{errored(codeBadRequest)}},
		{"1.2.2", "binary, 125 bytes", w(frame(wstest.OpBinary, bytesOf(125, 0xfe), true)), []expectation{errored(codeBadRequest)}},
		{"1.2.3", "binary, the frame limit + 1", w(frame(wstest.OpBinary, bytesOf(limit+1, 0xfe), true)), []expectation{closedWith(closeTooBig)}},
		{"1.3.1", "unmasked text frame", w(wstest.EncodeFrame(wstest.OpText, chatMsg("1.3.1", 0), true, wstest.FrameOptions{Unmasked: true})),
			[]expectation{closedWith(closeProtocol)}},
		{"1.3.2", "unmasked ping", w(wstest.EncodeFrame(wstest.OpPing, []byte("p"), true, wstest.FrameOptions{Unmasked: true})),
			[]expectation{closedWith(closeProtocol)}},
		{"1.3.3", "64-bit length with the most significant bit set", w([]byte{0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4, 'h', 'e', 'l', 'l', 'o'}),
			[]expectation{closedWith(closeProtocol)}},

		// 2 Pings and pongs.
		{"2.1", "ping, empty payload", w(frame(wstest.OpPing, nil, true)), []expectation{ponged(nil)}},
		{"2.2", "ping, text payload", w(frame(wstest.OpPing, []byte("Hello, world!"), true)), []expectation{ponged([]byte("Hello, world!"))}},
		{"2.3", "ping, binary payload", w(frame(wstest.OpPing, binaryPing, true)), []expectation{ponged(binaryPing)}},
		{"2.4", "ping, 125 bytes", w(frame(wstest.OpPing, bytesOf(125, 0xfe), true)), []expectation{ponged(bytesOf(125, 0xfe))}},
		{"2.5", "ping, 126 bytes", w(frame(wstest.OpPing, bytesOf(126, 0xfe), true)), []expectation{closedWith(closeProtocol)}},
		{"2.6", "ping, 125 bytes, byte by byte", chop(frame(wstest.OpPing, bytesOf(125, 0xfe), true), 1), []expectation{ponged(bytesOf(125, 0xfe))}},
		{"2.7", "unsolicited pong, empty", w(frame(wstest.OpPong, nil, true)), nil},
		{"2.8", "unsolicited pong, with payload", w(frame(wstest.OpPong, []byte("unsolicited"), true)), nil},
		{"2.9", "unsolicited pong, then ping", w(cat(frame(wstest.OpPong, []byte("u"), true), frame(wstest.OpPing, []byte("p"), true))),
			[]expectation{ponged([]byte("p"))}},
		{"2.10", "10 pings in one write: the latest is answered", w(bytes.Join(func() [][]byte {
			var f [][]byte
			for i := range 10 {
				f = append(f, frame(wstest.OpPing, []byte(fmt.Sprint("ping ", i)), true))
			}
			return f
		}(), nil)), []expectation{{kind: "pong", payload: []byte("ping 9"), lastOf: true}}},
		{"2.11", "ping, then a message", w(cat(frame(wstest.OpPing, []byte("first"), true), text(chatMsg("2.11", 0)))),
			[]expectation{ponged([]byte("first")), echoed("2.11")}},

		// 3 Reserved bits.
		{"3.1", "text, RSV1", w(rsvFrame(wstest.OpText, chatMsg("3.1", 0), 4)), []expectation{closedWith(closeProtocol)}},
		{"3.2", "text, RSV2", w(rsvFrame(wstest.OpText, chatMsg("3.2", 0), 2)), []expectation{closedWith(closeProtocol)}},
		{"3.3", "text, RSV3", w(rsvFrame(wstest.OpText, chatMsg("3.3", 0), 1)), []expectation{closedWith(closeProtocol)}},
		{"3.4", "a message, then text with RSV1-3, then a ping", w(cat(text(chatMsg("3.4", 0)), rsvFrame(wstest.OpText, chatMsg("no", 0), 7), frame(wstest.OpPing, nil, true))),
			[]expectation{closedAfter("3.4", closeProtocol)}},
		{"3.5", "binary, RSV1+RSV3", w(rsvFrame(wstest.OpBinary, bytesOf(8, 1), 5)), []expectation{closedWith(closeProtocol)}},
		{"3.6", "ping, RSV2+RSV3", w(rsvFrame(wstest.OpPing, []byte("p"), 3)), []expectation{closedWith(closeProtocol)}},
		{"3.7", "close, RSV1", w(rsvFrame(wstest.OpClose, binary.BigEndian.AppendUint16(nil, 1000), 4)), []expectation{closedWith(closeProtocol)}},
		{"3.8", "continuation, RSV2", w(cat(frame(wstest.OpText, chatMsg("3.8", 0)[:5], false), rsvFrame(wstest.OpContinuation, chatMsg("3.8", 0)[5:], 2))),
			[]expectation{closedWith(closeProtocol)}},
	}

	// 4 Opcodes: every reserved one, alone and after a message.
	for i, op := range []byte{3, 4, 5, 6, 7} {
		rows = append(rows, conformanceRow{fmt.Sprintf("4.1.%d", i+1), fmt.Sprintf("reserved data opcode %d", op),
			w(frame(op, []byte("x"), true)), []expectation{closedWith(closeProtocol)}})
	}
	for i, op := range []byte{11, 12, 13, 14, 15} {
		rows = append(rows, conformanceRow{fmt.Sprintf("4.2.%d", i+1), fmt.Sprintf("reserved control opcode %d", op),
			w(frame(op, nil, true)), []expectation{closedWith(closeProtocol)}})
	}
	rows = append(rows,
		conformanceRow{"4.3.1", "a message, then opcode 5, then a ping", w(cat(text(chatMsg("4.3.1", 0)), frame(5, nil, true), frame(wstest.OpPing, nil, true))),
			[]expectation{closedAfter("4.3.1", closeProtocol)}},
		conformanceRow{"4.3.2", "a message, then opcode 13 with payload", w(cat(text(chatMsg("4.3.2", 0)), frame(13, []byte("hello"), true))),
			[]expectation{closedAfter("4.3.2", closeProtocol)}},
	)

	// 5 Fragmentation: messages are reassembled up to the frame limit.
	m := func(id string) []byte { return chatMsg(id, 0) }
	rows = append(rows, []conformanceRow{
		{"5.1", "fragmented ping", w(cat(frame(wstest.OpPing, []byte("frag"), false), frame(wstest.OpContinuation, []byte("ment"), true))),
			[]expectation{closedWith(closeProtocol)}},
		{"5.2", "fragmented pong", w(cat(frame(wstest.OpPong, []byte("frag"), false), frame(wstest.OpContinuation, []byte("ment"), true))),
			[]expectation{closedWith(closeProtocol)}},
		{"5.3", "text in 2 fragments, one write", w(fragments(m("5.3"), 2)), []expectation{echoed("5.3")}},
		{"5.4", "text in 2 fragments, 2 writes", chop(fragments(m("5.4"), 2), len(frame(wstest.OpText, m("5.4")[:(len(m("5.4"))+1)/2], false))), []expectation{echoed("5.4")}},
		{"5.5", "text in 5 fragments, byte by byte", chop(fragments(m("5.5"), 5), 1), []expectation{echoed("5.5")}},
		{"5.6", "text in 2 fragments, a ping between", w(cat(frame(wstest.OpText, m("5.6")[:7], false), frame(wstest.OpPing, []byte("mid"), true), frame(wstest.OpContinuation, m("5.6")[7:], true))),
			[]expectation{ponged([]byte("mid")), echoed("5.6")}},
		{"5.7", "text in 3 fragments, a pong between each", w(cat(frame(wstest.OpText, m("5.7")[:5], false), frame(wstest.OpPong, nil, true),
			frame(wstest.OpContinuation, m("5.7")[5:10], false), frame(wstest.OpPong, nil, true), frame(wstest.OpContinuation, m("5.7")[10:], true))),
			[]expectation{echoed("5.7")}},
		{"5.8", "empty first and last fragments", w(cat(frame(wstest.OpText, nil, false), frame(wstest.OpContinuation, m("5.8"), false), frame(wstest.OpContinuation, nil, true))),
			[]expectation{echoed("5.8")}},
		{"5.9", "continuation, final, without a message", w(cat(frame(wstest.OpContinuation, []byte("x"), true), text(m("5.9")))), []expectation{closedWith(closeProtocol)}},
		{"5.10", "continuation, not final, without a message", w(cat(frame(wstest.OpContinuation, []byte("x"), false), text(m("5.10")))), []expectation{closedWith(closeProtocol)}},
		{"5.11", "a message, then a stray continuation", w(cat(text(m("5.11")), frame(wstest.OpContinuation, []byte("x"), true))),
			[]expectation{closedAfter("5.11", closeProtocol)}},
		{"5.12", "a new text frame inside a fragmented message", w(cat(frame(wstest.OpText, m("5.12")[:5], false), text(m("5.12")))), []expectation{closedWith(closeProtocol)}},
		{"5.13", "a binary frame inside a fragmented text message", w(cat(frame(wstest.OpText, m("5.13")[:5], false), frame(wstest.OpBinary, []byte{1}, true))), []expectation{closedWith(closeProtocol)}},
		{"5.14", "binary in 3 fragments: one error", w(cat(frame(wstest.OpBinary, []byte{1}, false), frame(wstest.OpContinuation, []byte{2}, false), frame(wstest.OpContinuation, []byte{3}, true))),
			[]expectation{errored(codeBadRequest)}},
		{"5.15", "fragments adding up to the frame limit", w(fragments(chatMsg("5.15", limit), 4)), []expectation{echoed("5.15")}},
		{"5.16", "fragments adding up to the frame limit + 1", w(fragments(chatMsg("5.16", limit+1), 4)), []expectation{closedWith(closeTooBig)}},
		{"5.17", "binary fragments adding up to the frame limit + 1", w(cat(frame(wstest.OpBinary, bytesOf(limit/2, 1), false), frame(wstest.OpContinuation, bytesOf(limit/2+1, 2), true))),
			[]expectation{closedWith(closeTooBig)}},
		{"5.18", "a close frame inside a fragmented message", w(cat(frame(wstest.OpText, m("5.17")[:5], false), closeFrame(1000, ""), frame(wstest.OpContinuation, m("5.17")[5:], true))),
			[]expectation{closedWith(closeNormal)}},
	}...)

	// 6 UTF-8: text messages must be valid UTF-8 (checked whole, after reassembly).
	kosme := "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5" // κόσμε
	rows = append(rows, []conformanceRow{
		{"6.1.1", "valid: κόσμε", w(text(chatMsg(kosme, 0))), []expectation{echoed(kosme)}},
		{"6.1.2", "valid: 4-byte sequences and U+FFFD", w(text(chatMsg("𝄞 \U0010FFFF \uFFFD", 0))), []expectation{echoed("𝄞 \U0010FFFF \uFFFD")}},
		{"6.1.3", "valid: split inside a code point across fragments", w(splitInside(rawMsg("ééé"), "é")), []expectation{echoed("ééé")}},
		{"6.2.1", "invalid: a lone continuation byte", w(text(rawMsg("a\x80b"))), []expectation{closedWith(closeBadData)}},
		{"6.2.2", "invalid: overlong '/'", w(text(rawMsg("\xc0\xaf"))), []expectation{closedWith(closeBadData)}},
		{"6.2.3", "invalid: UTF-16 surrogate U+D800", w(text(rawMsg("\xed\xa0\x80"))), []expectation{closedWith(closeBadData)}},
		{"6.2.4", "invalid: above U+10FFFF", w(text(rawMsg("\xf4\x90\x80\x80"))), []expectation{closedWith(closeBadData)}},
		{"6.2.5", "invalid: truncated sequence", w(text(rawMsg(kosme + "\xe2\x82"))), []expectation{closedWith(closeBadData)}},
		{"6.2.6", "invalid: 0xFE and 0xFF", w(text(rawMsg("\xfe\xff"))), []expectation{closedWith(closeBadData)}},
		{"6.2.7", "invalid: in the second fragment", w(fragments(rawMsg("valid then \xed\xbf\xbf"), 2)), []expectation{closedWith(closeBadData)}},
		{"6.2.8", "invalid: a text frame that is not JSON", w(text([]byte("\xff hello"))), []expectation{closedWith(closeBadData)}},
		{"6.3.1", "binary frames are not checked", w(frame(wstest.OpBinary, []byte{0xff, 0xfe}, true)), []expectation{errored(codeBadRequest)}},
	}...)

	// 7 Close handling: the client's close is answered once, with 1000; a
	// malformed one with 1002 (1007 for a reason that is not UTF-8).
	rows = append(rows, []conformanceRow{
		{"7.1.1", "close 1000", w(closeFrame(1000, "")), []expectation{closedWith(closeNormal)}},
		{"7.1.2", "close, empty payload", w(frame(wstest.OpClose, nil, true)), []expectation{closedWith(closeNormal)}},
		{"7.1.3", "close, then a message", w(cat(closeFrame(1000, ""), text(m("7.1.3")))), []expectation{closedWith(closeNormal)}},
		{"7.1.4", "a message, then close", w(cat(text(m("7.1.4")), closeFrame(1000, ""))), []expectation{closedAfter("7.1.4", closeNormal)}},
		{"7.1.5", "close with a UTF-8 reason", w(closeFrame(1001, kosme)), []expectation{closedWith(closeNormal)}},
		{"7.1.6", "close, 125-byte payload", w(closeFrame(1000, strings.Repeat("*", 123))), []expectation{closedWith(closeNormal)}},
		{"7.1.7", "close, 126-byte payload", w(closeFrame(1000, strings.Repeat("*", 124))), []expectation{closedWith(closeProtocol)}},
		{"7.1.8", "close, 1-byte payload", w(frame(wstest.OpClose, []byte{0x03}, true)), []expectation{closedWith(closeProtocol)}},
		{"7.1.9", "close, fragmented", w(frame(wstest.OpClose, binary.BigEndian.AppendUint16(nil, 1000), false)), []expectation{closedWith(closeProtocol)}},
		{"7.1.10", "close, reason not UTF-8", w(closeFrame(1000, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80")), []expectation{closedWith(closeBadData)}},
	}...)
	for i, code := range []uint16{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999} {
		rows = append(rows, conformanceRow{fmt.Sprintf("7.2.%d", i+1), fmt.Sprintf("close, valid code %d", code),
			w(closeFrame(code, "")), []expectation{closedWith(closeNormal)}})
	}
	for i, code := range []uint16{0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535} {
		rows = append(rows, conformanceRow{fmt.Sprintf("7.3.%d", i+1), fmt.Sprintf("close, invalid code %d", code),
			w(closeFrame(code, "")), []expectation{closedWith(closeProtocol)}})
	}
	return rows
}

func TestConformance(t *testing.T) {
	be := miniBackend(t)
	for _, row := range conformanceRows() {
		t.Run(row.id+" "+row.name, func(t *testing.T) {
			in := newInstance(t, be, WithKeyPrefix("conf"+row.id+":"))
			c := in.connect(t, "room="+confRoom+"&user=autobahn")
			for _, b := range row.writes {
				must(t, c.SendRaw(b))
				if len(row.writes) > 1 {
					time.Sleep(time.Millisecond)
				}
			}
			closed := false
			for _, want := range row.want {
				expect(t, c, want)
				closed = closed || want.kind == "close"
			}
			if !closed {
				// The connection still works.
				must(t, c.SendRaw(text(chatMsg("after "+row.id, 0))))
				expect(t, c, echoed("after "+row.id))
				return
			}
			eventually(t, wait, "connection still open after the close", func() bool { return in.clientCount() == 0 })
		})
	}
}

// expect reads the next frames and checks them against want. A close must
// be the only one: after answering it, the client sees the connection end.
func expect(t *testing.T, c *wstest.Conn, want expectation) {
	t.Helper()
	for {
		op, p, err := c.ReadFrame(wait)
		if err != nil {
			t.Fatalf("want %s %q %d: %v", want.kind, want.text, want.code, err)
		}
		switch {
		case want.kind == "pong" && op == wstest.OpPong:
			if bytes.Equal(p, want.payload) {
				return
			}
			if !want.lastOf {
				t.Fatalf("pong %q, want %q", p, want.payload)
			}
			continue
		case want.kind == "close" && op == wstest.OpClose:
			code := uint16(1005)
			if len(p) >= 2 {
				code = binary.BigEndian.Uint16(p)
			}
			if code != want.code {
				t.Fatalf("close %d %q, want %d", code, p[min(2, len(p)):], want.code)
			}
			if code != closeNormal && len(p) <= 2 {
				t.Errorf("close %d without a reason", code)
			}
			_ = c.SendClose(closeNormal, "")
			if op, p, err := c.ReadFrame(wait); err == nil {
				t.Fatalf("after close %d: another frame, op %#x %q", code, op, p)
			}
			c.Close() // the stream ended: close the TCP connection, as browsers do
			return
		case want.kind == "close" && want.maybe != "" && op == wstest.OpText &&
			bytes.Contains(p, []byte(`"text":"`+want.maybe+`"`)):
			continue
		case (want.kind == "echo" || want.kind == "error") && op == wstest.OpText:
			var f map[string]any
			must(t, json.Unmarshal(p, &f))
			if want.kind == "echo" && f["type"] == "message" && f["text"] == want.text ||
				want.kind == "error" && f["type"] == "error" && f["code"] == want.text {
				return
			}
			t.Fatalf("frame %.200s, want %s %q", p, want.kind, want.text)
		default:
			t.Fatalf("frame op %#x %.200q, want %s %q %d", op, p, want.kind, want.text, want.code)
		}
	}
}
