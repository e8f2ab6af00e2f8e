package chat

// Fuzz tests of the protocol: what a client may send (decodeFrame, and the
// frames the connection's reader takes apart) and what the server writes
// (appendJSONString, appendMessageFrame, errorFrame).
// Their seeds, here and in testdata/fuzz/, run with every go test.
//
//	go test -run '^$' -fuzz '^FuzzDecodeFrame$' -fuzztime 10m -parallel 1 .

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"os"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/alicebob/miniredis/v2"
	"github.com/chatrelay/chat/internal/wstest"
)

// fuzzCodes are the codes an error frame may carry.
var fuzzCodes = map[string]bool{
	codeBadRequest:   true,
	codeInvalidRoom:  true,
	codeNotJoined:    true,
	codeTooLarge:     true,
	codeRateLimited:  true,
	codeTooManyRooms: true,
	codeUnavailable:  true,
}

// FuzzDecodeFrame: whatever a client sends, decodeFrame does not panic and
// either accepts a frame the rest of the server can act on, or names a known
// error; and the error frame answering it is valid JSON carrying its ref.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range []string{
		`{"type":"join","room":"lobby","ref":"j1"}`,
		`{"type":"leave","room":"lobby"}`,
		`{"type":"message","room":"lobby","text":"hello","ref":"m1"}`,
		`{"type":"message","room":"lobby","text":"","ref":"m2"}`,
		`{"type":"message","room":"a b","text":"x","ref":"bad room"}`,
		`{"type":"join","room":"` + strings.Repeat("a", 65) + `"}`,
		`{"type":"join","room":"ok","ref":"` + strings.Repeat("r", 129) + `"}`,
		`{"type":1,"ref":"r1"}`,
		`{"type":"join","room":{"nested":{"deeper":[1,2,{"x":null}]}},"ref":"n"}`,
		`{"type":"message","room":"lobby","text":"t","ts":1e999999,"id":123456789012345678901234567890}`,
		`{"type":"join","type":"leave","room":"a","room":"b","ref":"dup","ref":"dup2"}`,
		`{"TYPE":"join","Room":"lobby","REF":"case"}`,
		`{"type":"message","room":"lobby","text":"\u0000\ud800\udc00\ud800x\u2028","ref":"\ud800"}`,
		"{\"type\":\"message\",\"room\":\"lobby\",\"text\":\"\xff\xfe\xed\xa0\x80\",\"ref\":\"\xc3\"}",
		strings.Repeat("[", 20000) + strings.Repeat("]", 20000),
		`{"type":"join","room":"lobby","x":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`,
		`{"type":"join","room":"lobby"} trailing`,
		`{"type":"join","room":"lobby"}{"type":"leave","room":"lobby"}`,
		`null`,
		" \t\r\n ",
		"",
		"\ufeff{\"type\":\"join\",\"room\":\"lobby\"}",
		`{"type":"join","room":"lobby","ref":null}`,
		`{"type":null,"room":"lobby","ref":7}`,
		`{"type":"shout","room":"lobby","ref":"s"}`,
		`{"ref":"only"`,
		`{"type":"join","room":"lobby","history":50,"ref":"h"}`,
		`{"type":"join","room":"lobby","history":-1,"ref":"h"}`,
		`{"type":"join","room":"lobby","history":"50","ref":"h"}`,
		`{"type":"join","room":"lobby","history":1e400,"ref":"h"}`,
		`{"type":"join","room":"lobby","since":{"epoch":"1764600000.123","seq":41},"ref":"s"}`,
		`{"type":"join","room":"lobby","since":{"epoch":"","seq":41},"ref":"s"}`,
		`{"type":"join","room":"lobby","since":{"epoch":"e","seq":-4},"ref":"s"}`,
		`{"type":"join","room":"lobby","since":{"epoch":7,"seq":"x"},"ref":"s"}`,
		`{"type":"join","room":"lobby","since":[1,2],"history":2,"ref":"s"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, rerr := decodeFrame(data)
		if len(fr.Ref) > maxRefLen {
			t.Fatalf("ref of %d bytes returned (max %d)", len(fr.Ref), maxRefLen)
		}
		if !utf8.ValidString(fr.Ref) {
			t.Fatalf("ref %q is not valid UTF-8", fr.Ref)
		}
		code, msg := codeRateLimited, "too many frames; slow down" // a valid frame can still be refused
		if rerr != nil {
			if !fuzzCodes[rerr.code] {
				t.Fatalf("unknown error code %q (%v)", rerr.code, rerr)
			}
			if rerr.msg == "" {
				t.Fatalf("empty error message for code %q", rerr.code)
			}
			code, msg = rerr.code, rerr.msg
		} else {
			switch fr.Type {
			case typeJoin, typeLeave, typeMessage:
			default:
				t.Fatalf("accepted frame of type %q", fr.Type)
			}
			if !validRoom(fr.Room) {
				t.Fatalf("accepted invalid room %q", fr.Room)
			}
			if fr.Type == typeMessage && fr.Text == "" {
				t.Fatal("accepted message without text")
			}
			if !json.Valid(data) {
				t.Fatalf("accepted invalid JSON %q", data)
			}
		}

		ef := errorFrame(code, msg, fr.Ref)
		if !json.Valid(ef) {
			t.Fatalf("error frame is not valid JSON: %q", ef)
		}
		var back struct {
			Type    string  `json:"type"`
			Code    string  `json:"code"`
			Message string  `json:"message"`
			Ref     *string `json:"ref"`
		}
		if err := json.Unmarshal(ef, &back); err != nil {
			t.Fatalf("error frame %q: %v", ef, err)
		}
		if back.Type != "error" || back.Code != code || back.Message != string([]rune(msg)) {
			t.Fatalf("error frame %q decodes to %+v", ef, back)
		}
		switch {
		case fr.Ref == "" && back.Ref != nil:
			t.Fatalf("error frame %q has a ref, want none", ef)
		case fr.Ref != "" && (back.Ref == nil || *back.Ref != fr.Ref):
			t.Fatalf("error frame %q: ref %v, want %q", ef, back.Ref, fr.Ref)
		}
	})
}

// FuzzAppendJSONString: any Go string, valid UTF-8 or not, is written as a
// valid JSON string that decodes to the string with each invalid byte
// replaced by U+FFFD (as encoding/json does), and that contains no raw
// control character or U+2028/U+2029.
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{
		"", "hello", `"quoted" \back\slash/`, "\x00\x01\x07\x08\x0c\x1f\x7f",
		"\n\r\t", "<script>&amp;</script>", "é漢字🙂", "\u2028\u2029",
		"\xff", "\xed\xa0\x80", "\xc3", "a\xe2\x82", "\xf4\x90\x80\x80", "\ufffd",
		`\ud800`, "\U0010ffff",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := appendJSONString(nil, s)
		if !json.Valid(b) {
			t.Fatalf("appendJSONString(%q) = %q: not valid JSON", s, b)
		}
		if !utf8.Valid(b) {
			t.Fatalf("appendJSONString(%q) = %q: not valid UTF-8", s, b)
		}
		if i := bytes.IndexFunc(b, func(r rune) bool { return r < 0x20 || r == '\u2028' || r == '\u2029' }); i >= 0 {
			t.Fatalf("appendJSONString(%q) = %q: raw control or line separator at %d", s, b, i)
		}
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("appendJSONString(%q) = %q: %v", s, b, err)
		}
		if want := string([]rune(s)); got != want {
			t.Fatalf("appendJSONString(%q) = %q decodes to %q, want %q", s, b, got, want)
		}
		// Appending keeps what was there.
		if b2 := appendJSONString([]byte("prefix"), s); string(b2) != "prefix"+string(b) {
			t.Fatalf("appending to a prefix gives %q", b2)
		}
	})
}

// FuzzMessageFrame: a message frame encodes whatever the fields hold as a
// JSON object from which encoding/json reads the same fields back.
func FuzzMessageFrame(f *testing.F) {
	f.Add("lobby", "alice", "hello", "r1", int64(1732700000000))
	f.Add("a", "", "", "", int64(0))
	f.Add("room.with-dots_1", "名前", "line\nbreak \"quoted\" \\ \u2028", "\x00", int64(-1))
	f.Add("\xff", "\xed\xa0\x80", "\xc3(", `\ud800`, int64(math.MaxInt64))
	f.Add(`{"}`, "</script>", "\x7f\x1f", `","ref":"x`, int64(math.MinInt64))
	f.Fuzz(func(t *testing.T, room, user, text, ref string, ts int64) {
		m := Message{Room: room, ID: "inst-1z", User: user, Text: text, TS: ts, Instance: "inst", Ref: ref}
		b := appendMessageFrame([]byte("keep"), &m)
		if string(b[:4]) != "keep" {
			t.Fatalf("prefix overwritten: %q", b)
		}
		b = b[4:]
		if !json.Valid(b) {
			t.Fatalf("frame %q is not valid JSON", b)
		}
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(b, &raw); err != nil {
			t.Fatalf("frame %q: %v", b, err)
		}
		wantKeys := 7
		if ref != "" {
			wantKeys++
		}
		if len(raw) != wantKeys {
			t.Fatalf("frame %q has %d keys, want %d", b, len(raw), wantKeys)
		}
		var got struct {
			Type     string  `json:"type"`
			Room     string  `json:"room"`
			ID       string  `json:"id"`
			User     string  `json:"user"`
			Text     string  `json:"text"`
			TS       int64   `json:"ts"`
			Instance string  `json:"instance"`
			Ref      *string `json:"ref"`
		}
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("frame %q: %v", b, err)
		}
		u := func(s string) string { return string([]rune(s)) }
		if got.Type != typeMessage || got.Room != u(room) || got.ID != m.ID || got.User != u(user) ||
			got.Text != u(text) || got.TS != ts || got.Instance != m.Instance {
			t.Fatalf("frame %q decodes to %+v, want %+v", b, got, m)
		}
		switch {
		case ref == "" && got.Ref != nil:
			t.Fatalf("frame %q has a ref, want none", b)
		case ref != "" && (got.Ref == nil || *got.Ref != u(ref)):
			t.Fatalf("frame %q: ref %v, want %q", b, got.Ref, u(ref))
		}
	})
}

// FuzzReader: whatever frames a client sends, the connection's reader does
// not panic or hang: the server answers with well-formed frames, text
// frames of valid JSON, and ends, if it does, with one close frame carrying
// a code it is allowed to send. The input is a sequence of frames, each
// [flags: FIN|RSV|opcode][payload length][payload], masked as a client must.
func FuzzReader(f *testing.F) {
	frame := func(flags byte, payload string) []byte {
		return append([]byte{flags, byte(len(payload))}, payload...)
	}
	join := `{"type":"join","room":"fz"}`
	msg := `{"type":"message","room":"fz","text":"hi","ref":"r"}`
	for _, seed := range [][]byte{
		frame(0x81, join),
		append(frame(0x81, join), frame(0x81, msg)...),
		append(frame(0x01, msg[:10]), frame(0x80, msg[10:])...),        // fragmented
		append(frame(0x01, msg[:10]), frame(0x89, "ping")...),          // ping between fragments
		frame(0x89, strings.Repeat("p", 126)),                          // oversized control payload
		frame(0xc1, join),                                              // RSV1
		frame(0x83, "x"),                                               // reserved opcode
		frame(0x81, "\xff\xfe"),                                        // invalid UTF-8
		frame(0x88, "\x03\xe7"),                                        // close 999
		frame(0x88, "\x03"),                                            // 1-byte close payload
		frame(0x80, "orphan"),                                          // continuation with no message
		append(frame(0x82, "\x00\x01"), frame(0x8a, "unsolicited")...), // binary, pong
	} {
		f.Add(seed)
	}
	be := &backend{mr: miniredis.RunT(f)}
	be.addr = be.mr.Addr()
	// A quiet logger: the fuzz target runs after f has stopped taking logs.
	in := newInstance(f, be, WithRateLimit(0, 1), WithLogger(slog.New(slog.DiscardHandler)),
		func(c *config) { c.closeGrace = 200 * time.Millisecond })
	allowed := map[uint16]bool{1000: true, 1002: true, 1007: true, 1008: true, 1009: true}

	f.Fuzz(func(t *testing.T, data []byte) {
		c, status, err := wstest.Dial(t, in.url+"?user=fuzz", nil)
		if status != 101 {
			t.Fatalf("dial: %d %v", status, err)
		}
		defer c.Close()
		var stream []byte
		for rest := data; len(rest) >= 2; {
			flags, n := rest[0], int(rest[1])
			rest = rest[2:]
			n = min(n, len(rest))
			stream = append(stream, wstest.EncodeFrame(flags&0x0f, rest[:n], flags&0x80 != 0, wstest.FrameOptions{RSV: flags >> 4 & 7})...)
			rest = rest[n:]
		}
		stream = append(stream, wstest.EncodeFrame(wstest.OpClose, []byte{0x03, 0xe8}, true, wstest.FrameOptions{})...)
		if err := c.SendRaw(stream); err != nil {
			return // the server hung up early: what it sent is checked below
		}
		for {
			op, payload, err := c.ReadFrame(5 * time.Second)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("the server neither answered the close nor ended the connection within 5 s")
			}
			if err != nil {
				return // the connection ended
			}
			switch op {
			case wstest.OpText:
				if !json.Valid(payload) {
					t.Fatalf("server sent invalid JSON: %q", payload)
				}
			case wstest.OpPong:
			case wstest.OpClose:
				if len(payload) < 2 || !allowed[uint16(payload[0])<<8|uint16(payload[1])] || !utf8.Valid(payload[2:]) {
					t.Fatalf("server close frame % x", payload)
				}
				return
			default:
				t.Fatalf("server sent opcode %#x", op)
			}
		}
	})
}
