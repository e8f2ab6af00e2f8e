package chat

import (
	"context"
	"errors"
	"testing"
	"time"
)

// The room key is set on join, refreshed by messages, and expires TTL after
// the last sign of life (miniredis's clock is moved by hand).
func TestRoomActivityKey(t *testing.T) {
	be := miniBackend(t)
	mr := be.mr
	in := newInstance(t, be)
	ctx := context.Background()
	active := func(room string) bool {
		ok, err := in.h.RoomActive(ctx, room)
		must(t, err)
		return ok
	}
	if active("quiet") {
		t.Fatal("a room nobody joined is active")
	}
	c := in.connect(t, "room=quiet&user=zed")
	if !active("quiet") {
		t.Fatal("room not active once joined")
	}
	if ttl := mr.TTL("chat:room:{quiet}"); ttl != 5*time.Minute {
		t.Fatalf("TTL after join = %v, want 5m", ttl)
	}
	mr.FastForward(4 * time.Minute)
	must(t, c.SendJSON(msgFrame("quiet", "still alive", "")))
	c.Next(t, "message", wait)
	if ttl := mr.TTL("chat:room:{quiet}"); ttl != 5*time.Minute {
		t.Fatalf("TTL after a message = %v, want it refreshed to 5m", ttl)
	}
	c.Close()
	mr.FastForward(5*time.Minute + time.Second)
	if active("quiet") {
		t.Fatal("room still active a TTL after its last sign of life")
	}
	if _, err := in.h.RoomActive(ctx, "bad room"); !errors.Is(err, ErrInvalidRoom) {
		t.Fatalf("RoomActive(bad room) error = %v, want ErrInvalidRoom", err)
	}
}

// While an instance holds members, it keeps the room key alive by itself,
// and the key expires once they are gone (real Redis, real time).
func TestRoomActivityRefreshedWhileMembersStay(t *testing.T) {
	be := realRedis(t)
	const ttl = 2 * time.Second
	in := newInstance(t, be, WithRoomTTL(ttl))
	rdb := be.client(t)
	ctx := context.Background()
	c := in.connect(t, "room=lasting&user=stay")
	// Stay silent for two TTLs: only the periodic refresh can keep the key.
	deadline := time.Now().Add(2 * ttl)
	for time.Now().Before(deadline) {
		if n, err := rdb.Exists(ctx, "chat:room:{lasting}").Result(); err != nil || n != 1 {
			t.Fatalf("room key gone while a member is connected (exists=%d, err=%v)", n, err)
		}
		time.Sleep(100 * time.Millisecond) // sampling the key, not synchronising
	}
	c.Close()
	eventually(t, 2*ttl, "room key still there a TTL after its last member left", func() bool {
		n, err := rdb.Exists(ctx, "chat:room:{lasting}").Result()
		return err == nil && n == 0
	})
}
