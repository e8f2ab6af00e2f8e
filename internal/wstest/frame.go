package wstest

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"time"
)

// FrameOptions break further rules in a frame that SendFrameWith sends or
// EncodeFrame encodes.
type FrameOptions struct {
	RSV      byte // the RSV1-3 bits, 0-7 (4 is RSV1), which need a negotiated extension
	Unmasked bool // no masking key: a client must mask every frame
}

// SendFrameWith is SendFrame with the rule-breaking options o.
func (c *Conn) SendFrameWith(opcode byte, payload []byte, fin bool, o FrameOptions) error {
	if opcode > 0x0f || o.RSV > 7 {
		return fmt.Errorf("SendFrameWith: opcode %#x or RSV %#x does not fit", opcode, o.RSV)
	}
	return c.SendRaw(EncodeFrame(opcode, payload, fin, o))
}

// EncodeFrame returns the bytes of one client frame (masked unless
// o.Unmasked), for SendRaw: a test can then send them in pieces, or join
// several frames in one write. opcode and o.RSV are truncated to their bits.
func EncodeFrame(opcode byte, payload []byte, fin bool, o FrameOptions) []byte {
	b0 := opcode&0x0f | (o.RSV&7)<<4
	if fin {
		b0 |= 0x80
	}
	var maskBit byte = 0x80
	if o.Unmasked {
		maskBit = 0
	}
	n := len(payload)
	frame := make([]byte, 0, 14+n)
	switch {
	case n < 126:
		frame = append(frame, b0, maskBit|byte(n))
	case n <= 0xffff:
		frame = append(frame, b0, maskBit|126)
		frame = binary.BigEndian.AppendUint16(frame, uint16(n))
	default:
		frame = append(frame, b0, maskBit|127)
		frame = binary.BigEndian.AppendUint64(frame, uint64(n))
	}
	if o.Unmasked {
		return append(frame, payload...)
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	frame = append(frame, mask[:]...)
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	return frame
}

// SendRaw writes b to the connection as it is (within the 10 s write
// deadline): any bytes at all, such as part of a frame.
func (c *Conn) SendRaw(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := c.conn.Write(b)
	return err
}
