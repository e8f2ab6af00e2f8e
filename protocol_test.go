package chat

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/chatrelay/chat/internal/wstest"
)

// Every bad input of the protocol gets its error code, with the frame's ref
// where it has one, and the connection keeps working afterwards.
func TestBadInputGetsErrorFrames(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		in := newInstance(t, be, WithRateLimit(0, 1), WithMaxRooms(2))
		c := in.connect(t, "room=ok&user=tester")
		long := strings.Repeat("é", 2049) // 4098 bytes
		for _, tc := range []struct {
			name, frame, code, ref string
		}{
			{"not JSON", `hello`, codeBadRequest, ""},
			{"broken JSON", `{"type":"message",`, codeBadRequest, ""},
			{"array", `[1,2]`, codeBadRequest, ""},
			{"null", `null`, codeBadRequest, ""},
			{"string", `"message"`, codeBadRequest, ""},
			{"number type", `{"type":1,"ref":"r1"}`, codeBadRequest, "r1"},
			{"missing type", `{"room":"ok","ref":"r2"}`, codeBadRequest, "r2"},
			{"unknown type", `{"type":"shout","room":"ok","ref":"r3"}`, codeBadRequest, "r3"},
			{"missing room", `{"type":"join","ref":"r4"}`, codeBadRequest, "r4"},
			{"missing text", `{"type":"message","room":"ok","ref":"r5"}`, codeBadRequest, "r5"},
			{"long ref", `{"type":"join","room":"ok","ref":"` + strings.Repeat("r", 129) + `"}`, codeBadRequest, ""},
			{"invalid room", `{"type":"join","room":"no spaces","ref":"r6"}`, codeInvalidRoom, "r6"},
			{"room too long", `{"type":"join","room":"` + strings.Repeat("a", 65) + `","ref":"r7"}`, codeInvalidRoom, "r7"},
			{"not joined", `{"type":"message","room":"elsewhere","text":"hi","ref":"r8"}`, codeNotJoined, "r8"},
			{"leave not joined", `{"type":"leave","room":"elsewhere","ref":"r9"}`, codeNotJoined, "r9"},
			{"too large", `{"type":"message","room":"ok","text":"` + long + `","ref":"r10"}`, codeTooLarge, "r10"},
		} {
			must(t, c.SendText(tc.frame))
			e := c.Next(t, "error", wait)
			if e["code"] != tc.code || str(e["ref"]) != str(orNil(tc.ref)) || e["message"] == "" {
				t.Errorf("%s: got %v, want code %s ref %q", tc.name, e, tc.code, tc.ref)
			}
		}
		// A binary frame is refused with bad_request too.
		must(t, c.SendFrame(wstest.OpBinary, []byte{0, 1, 2}, true))
		if e := c.Next(t, "error", wait); e["code"] != codeBadRequest {
			t.Errorf("binary frame: got %v", e)
		}
		// Too many rooms: the connection is in "ok", may join one more.
		must(t, c.SendJSON(map[string]any{"type": "join", "room": "second"}))
		c.Next(t, "joined", wait)
		must(t, c.SendJSON(map[string]any{"type": "join", "room": "third", "ref": "j3"}))
		if e := c.Next(t, "error", wait); e["code"] != codeTooManyRooms || e["ref"] != "j3" {
			t.Errorf("third room: got %v", e)
		}
		// After all that the connection still works, and a spoofed
		// identity in a frame is ignored.
		must(t, c.SendText(`{"type":"message","room":"ok","text":"exactly 4096","user":"admin","instance":"fake","id":"x","ts":1,"ref":"last"}`))
		m := c.Next(t, "message", wait)
		if m["user"] != "tester" || m["instance"] != in.h.InstanceID() || m["id"] == "x" || m["ts"] == 1.0 || m["ref"] != "last" {
			t.Fatalf("message = %v: spoofed fields leaked or connection broken", m)
		}
		must(t, c.SendJSON(msgFrame("ok", strings.Repeat("é", 2048), "max"))) // 4096 bytes: allowed
		if m := c.Next(t, "message", wait); m["ref"] != "max" {
			t.Fatalf("a text of exactly the limit was not relayed: %v", m)
		}
	})
}

func orNil(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func TestUserAndRoomValidation(t *testing.T) {
	for s, want := range map[string]bool{
		"alice": true, "Zoë": true, "a b": true, strings.Repeat("u", 32): true, strings.Repeat("é", 32): true,
		"": false, strings.Repeat("u", 33): false, "tab\t": false, "nl\n": false, "\xff": false, "zero\u200b": false,
	} {
		if got := validUser(s); got != want {
			t.Errorf("validUser(%q) = %v, want %v", s, got, want)
		}
	}
	for s, want := range map[string]bool{
		"lobby": true, "A.b_c-9": true, strings.Repeat("r", 64): true,
		"": false, strings.Repeat("r", 65): false, "a b": false, "é": false, "a/b": false, "{x}": false,
	} {
		if got := validRoom(s); got != want {
			t.Errorf("validRoom(%q) = %v, want %v", s, got, want)
		}
	}
}

// The hand-written encoder produces what encoding/json would read back as
// the same strings, for awkward input too.
func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{
		"", "plain", `quote " backslash \ slash /`, "ctl \x00\x01\x1f\x7f", "nl\n cr\r tab\t",
		"<script>&amp;", "\u2028\u2029", "emoji 🎉", "bad utf8 \xff\xfe end", "\xed\xa0\x80 surrogate",
	} {
		b := appendJSONString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%q encoded as %s: invalid JSON: %v", s, b, err)
		}
		want := string([]rune(s)) // each invalid byte becomes U+FFFD, as with encoding/json
		if got != want {
			t.Errorf("%q → %s → %q, want %q", s, b, got, want)
		}
	}
}
