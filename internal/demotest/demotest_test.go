package demotest_test

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/chatrelay/chat/internal/demotest"
)

func TestMain(m *testing.M) { demotest.Main(m) }

// RepoRoot finds the root module from this package's directory.
func TestRepoRoot(t *testing.T) {
	root := demotest.RepoRoot(t)
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, "internal", "demotest"); wd != want {
		t.Fatalf("RepoRoot = %s; the working directory %s is not its internal/demotest", root, wd)
	}
}

// A demo on the embedded Redis is healthy once Start returns, and stops
// cleanly (exit 0) on SIGTERM; stopping again is harmless.
func TestStartStop(t *testing.T) {
	addr := demotest.FreeAddr(t)
	d := demotest.Start(t, "embedded", []string{addr})
	resp, err := http.Get("http://" + addr + "/info")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /info: status %d", resp.StatusCode)
	}
	if err := d.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := d.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
		t.Fatal("the demo still answers after Stop")
	}
}
