package chat

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode"
	"unicode/utf8"
)

// Error codes sent in {"type":"error"} frames; the README's protocol
// section says when each is sent.
const (
	codeBadRequest   = "bad_request"
	codeInvalidRoom  = "invalid_room"
	codeNotJoined    = "not_joined"
	codeTooLarge     = "too_large"
	codeRateLimited  = "rate_limited"
	codeTooManyRooms = "too_many_rooms"
	codeUnavailable  = "unavailable"
	codeForbidden    = "forbidden"
)

// Client frame types. The server's frames are written by their encoders below.
const (
	typeJoin     = "join"
	typeLeave    = "leave"
	typeMessage  = "message"
	typePresence = "presence"
)

const (
	maxRoomLen = 64
	maxUserLen = 32  // characters, not bytes
	maxRefLen  = 128 // bytes; a ref is echoed back, so it is bounded like everything else
)

// inFrame is a frame from a client. Fields the server sets itself (user,
// instance, id, ts) are deliberately absent: whatever a client puts there is
// ignored.
type inFrame struct {
	Type string `json:"type"`
	Room string `json:"room"`
	Text string `json:"text"`
	Ref  string `json:"ref"`

	// join only: how many of the latest messages to send with "joined",
	// and the position after which to send every message (recovery).
	History *int      `json:"history"`
	Since   *position `json:"since"`
}

// position is a place in a room's sequence: the client has every message
// of epoch Epoch up to Seq.
type position struct {
	Epoch string `json:"epoch"`
	Seq   *int64 `json:"seq"`
}

// requestError is a client mistake answered with an error frame; the
// connection stays open.
type requestError struct {
	code, msg string
}

func (e *requestError) Error() string { return e.code + ": " + e.msg }

func badRequest(msg string) *requestError { return &requestError{codeBadRequest, msg} }

// decodeFrame parses and validates one client frame. It never panics, whatever
// the input; every failure is a *requestError that names what was wrong.
// The returned frame keeps any ref it could read so that the error can carry it.
func decodeFrame(data []byte) (inFrame, *requestError) {
	var f inFrame
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return f, badRequest("frame is not a JSON object")
	}
	if err := json.Unmarshal(data, &f); err != nil {
		// A wrongly typed field fails the whole decode; try to keep the ref
		// so the client can still match the error to its request.
		var r struct {
			Ref string `json:"ref"`
		}
		_ = json.Unmarshal(data, &r)
		f = inFrame{Ref: r.Ref}
		if len(f.Ref) > maxRefLen {
			f.Ref = ""
		}
		return f, badRequest("frame is not valid JSON with string fields: " + err.Error())
	}
	if len(f.Ref) > maxRefLen {
		f.Ref = ""
		return f, badRequest("ref is longer than " + strconv.Itoa(maxRefLen) + " bytes")
	}
	switch f.Type {
	case typeJoin, typeLeave, typeMessage, typePresence:
	case "":
		return f, badRequest("missing field: type")
	default:
		t := f.Type
		if len(t) > 32 { // never echo a client's string at length
			t = t[:32] + "…"
		}
		return f, badRequest("unknown frame type " + strconv.Quote(t))
	}
	if f.Room == "" {
		return f, badRequest("missing field: room")
	}
	if !validRoom(f.Room) {
		return f, &requestError{codeInvalidRoom, "room names are 1-64 characters of A-Z a-z 0-9 . _ -"}
	}
	if f.Type == typeMessage && f.Text == "" {
		return f, badRequest("missing field: text")
	}
	if f.Type == typeJoin {
		if f.History != nil && *f.History < 0 {
			return f, badRequest("history must be a count of messages, 0 or more")
		}
		if s := f.Since; s != nil && (s.Epoch == "" || len(s.Epoch) > maxRefLen || s.Seq == nil || *s.Seq < 0) {
			return f, badRequest(`since must be {"epoch":"…","seq":N} from an earlier joined or message`)
		}
	}
	return f, nil
}

// validRoom reports whether s is 1–64 characters of A-Z a-z 0-9 . _ -.
func validRoom(s string) bool {
	if len(s) == 0 || len(s) > maxRoomLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// validUser reports whether s is 1–32 printable characters of valid UTF-8.
func validUser(s string) bool {
	if s == "" || !utf8.ValidString(s) {
		return false
	}
	n := 0
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
		n++
	}
	return n <= maxUserLen
}

// Message is a chat message as it travels through Redis and reaches the
// members of its room: the "message" frame of the protocol.
type Message struct {
	ID       string `json:"id"`       // unique: <instance>-<counter>
	Room     string `json:"room"`     //
	User     string `json:"user"`     // the sender's display name
	Text     string `json:"text"`     //
	TS       int64  `json:"ts"`       // Unix milliseconds at the origin instance
	Instance string `json:"instance"` // the origin instance's ID
	Seq      int64  `json:"seq"`      // the room's sequence number, 1, 2, 3, … in an epoch
	Ref      string `json:"ref,omitempty"`
}

// appendMessageFrame encodes m, but for its seq, as the protocol's message
// frame: the publish script adds the seq that Redis gives it, and every
// instance relays the bytes to its clients unchanged. A message is encoded
// once, at its origin.
func appendMessageFrame(b []byte, m *Message) []byte {
	b = append(b, `{"type":"message","room":`...)
	b = appendJSONString(b, m.Room)
	b = append(b, `,"id":`...)
	b = appendJSONString(b, m.ID)
	b = append(b, `,"user":`...)
	b = appendJSONString(b, m.User)
	b = append(b, `,"text":`...)
	b = appendJSONString(b, m.Text)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, m.TS, 10)
	b = append(b, `,"instance":`...)
	b = appendJSONString(b, m.Instance)
	if m.Ref != "" {
		b = append(b, `,"ref":`...)
		b = appendJSONString(b, m.Ref)
	}
	return append(b, '}')
}

// joinedAtFrame is the answer to a join: the room's epoch and position,
// the messages asked for (stored frames, oldest first, given only when
// history or since was asked), and whether since could be continued
// (recovered: only when since was given).
func joinedAtFrame(room string, at roomPosition, messages [][]byte, recovered *bool) []byte {
	size := 96 + len(room) + len(at.epoch)
	for _, m := range messages {
		size += len(m) + 1
	}
	b := append(make([]byte, 0, size), `{"type":"joined","room":`...)
	b = appendJSONString(b, room)
	b = append(b, `,"epoch":`...)
	b = appendJSONString(b, at.epoch)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, at.seq, 10)
	if recovered != nil {
		b = append(b, `,"recovered":`...)
		b = strconv.AppendBool(b, *recovered)
	}
	if messages != nil {
		b = append(b, `,"messages":[`...)
		for i, m := range messages {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, m...)
		}
		b = append(b, ']')
	}
	return append(b, '}')
}

// resumedFrame tells a room's members that the instance lost its
// subscription and could not fill the gap: they may have missed messages,
// and the room now stands at at.
func resumedFrame(room string, at roomPosition) []byte {
	b := append(make([]byte, 0, 112+len(room)+len(at.epoch)), `{"type":"joined","room":`...)
	b = appendJSONString(b, room)
	b = append(b, `,"resumed":true,"recovered":false,"epoch":`...)
	b = appendJSONString(b, at.epoch)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, at.seq, 10)
	return append(b, '}')
}

func joinedFrame(room string, resumed bool) []byte {
	b := append(make([]byte, 0, 48+len(room)), `{"type":"joined","room":`...)
	b = appendJSONString(b, room)
	if resumed {
		b = append(b, `,"resumed":true`...)
	}
	return append(b, '}')
}

func leftFrame(room string) []byte {
	b := append(make([]byte, 0, 32+len(room)), `{"type":"left","room":`...)
	b = appendJSONString(b, room)
	return append(b, '}')
}

// kickedFrame tells a client the server took it out of room.
func kickedFrame(room string) []byte {
	b := append(make([]byte, 0, 48+len(room)), `{"type":"left","room":`...)
	b = appendJSONString(b, room)
	return append(b, `,"reason":"kicked"}`...)
}

// kickPrefix starts the control message that Kick publishes on a room's
// channel: {"type":"kick","room":"r","user":"u"}. Instances act on it and
// relay it to nobody.
const kickPrefix = `{"type":"kick",`

func kickPayload(room, user string) []byte {
	b := append(make([]byte, 0, 48+len(room)+len(user)), kickPrefix...)
	b = append(b, `"room":`...)
	b = appendJSONString(b, room)
	b = append(b, `,"user":`...)
	b = appendJSONString(b, user)
	return append(b, '}')
}

func errorFrame(code, msg, ref string) []byte {
	b := append(make([]byte, 0, 64+len(msg)+len(ref)), `{"type":"error","code":`...)
	b = appendJSONString(b, code)
	b = append(b, `,"message":`...)
	b = appendJSONString(b, msg)
	if ref != "" {
		b = append(b, `,"ref":`...)
		b = appendJSONString(b, ref)
	}
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string. Like encoding/json it escapes
// control characters and U+2028/U+2029 and replaces invalid UTF-8 with
// U+FFFD; unlike it, it leaves <, > and & alone (frames are not HTML).
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
