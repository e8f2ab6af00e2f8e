package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/chatrelay/chat/internal/demotest"
)

// TestChatJSClient runs testdata/chatjs_test.mjs, a unit test of chat.js
// against a fake WebSocket, with node. Skipped when node is missing unless
// CHAT_REQUIRE_NODE=1.
func TestChatJSClient(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("CHAT_REQUIRE_NODE") == "1" {
			t.Fatal("node not found on $PATH and CHAT_REQUIRE_NODE=1")
		}
		t.Skip("node not found on $PATH; set CHAT_REQUIRE_NODE=1 to fail instead")
	}
	dir := t.TempDir()
	for src, dst := range map[string]string{
		filepath.Join(demotest.RepoRoot(t), "chat.js"): "chat.mjs", // .mjs: an ES module for any node version
		filepath.Join("testdata", "chatjs_test.mjs"):   "chatjs_test.mjs",
	} {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dst), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(node, "chatjs_test.mjs")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node chatjs_test.mjs: %v\n%s", err, out)
	}
	t.Logf("node: %s", out)
}
