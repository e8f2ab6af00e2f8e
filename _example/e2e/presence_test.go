package e2e

import (
	"fmt"
	"testing"
	"time"
)

// TestKilledInstanceLeavesPresence: a demo process that dies by SIGKILL
// says no goodbye, yet its users are announced left to the other
// process's members within the presence TTL (60 s, so within 75 s) and are
// gone from presence.
func TestKilledInstanceLeavesPresence(t *testing.T) {
	a, addrA, addrB, _ := twoDemos(t, nil, nil)

	carol := dialWS(t, "ws://"+addrA+"/chat?room=crash&user=carol")
	expect(t, "carol@A", carol, "joined")
	bob := dialWS(t, "ws://"+addrB+"/chat?room=crash&user=bob")
	bob.Presence = true
	expect(t, "bob@B", bob, "joined")
	if err := bob.SendJSON(map[string]any{"type": "presence", "room": "crash"}); err != nil {
		t.Fatal(err)
	}
	if f := bob.Next(t, "presence", 10*time.Second); fmt.Sprint(f["users"]) != "[bob carol]" {
		t.Fatalf("presence before the crash: %v", f)
	}

	a.Kill()
	killed := time.Now()
	for {
		f := bob.Next(t, "user_left", 75*time.Second-time.Since(killed))
		if f["user"] == "carol" {
			break
		}
	}
	t.Logf("carol announced left %v after her process was killed", time.Since(killed).Round(time.Second))
	if err := bob.SendJSON(map[string]any{"type": "presence", "room": "crash"}); err != nil {
		t.Fatal(err)
	}
	if f := bob.Next(t, "presence", 10*time.Second); fmt.Sprint(f["users"]) != "[bob]" {
		t.Fatalf("presence after the crash: %v, want bob alone", f)
	}
}
