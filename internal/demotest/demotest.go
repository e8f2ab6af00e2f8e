// Package demotest builds the chat demo (the _example directory) and runs it
// as a child process, so that tests can talk to real servers over TCP, read
// their memory and stop them with a signal as an operator would.
//
// Packages that start demos call Main from their TestMain, so that the demo
// binary, built once per test binary, is removed afterwards.
//
// It is test infrastructure: only _test.go files import it, so importers of
// the chat package never compile it.
package demotest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chatrelay/chat/internal/redistest"
)

const (
	modulePath   = "github.com/chatrelay/chat"
	readyTimeout = 30 * time.Second // how long Start waits for /healthz
	stopTimeout  = 15 * time.Second // how long Stop waits after SIGTERM
	logTail      = 16 << 10         // bytes of the demo's log shown in failures
)

var build struct {
	once sync.Once
	dir  string // holds the binary; removed by Main
	bin  string
	err  error
}

// Main runs the tests and exits with their status, after reporting tests
// skipped for want of redis-server and removing the demo binary that
// Binary built. Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	redistest.ReportSkips()
	if build.dir != "" {
		_ = os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// RepoRoot returns the root directory of the module github.com/chatrelay/chat:
// the nearest directory at or above the working directory whose go.mod
// declares that module (a nested module such as _example/e2e is passed
// over). It fails the test if there is none.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if declaresModule(filepath.Join(dir, "go.mod")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod of %s at or above the working directory", modulePath)
		}
		dir = parent
	}
}

func declaresModule(gomod string) bool {
	f, err := os.Open(gomod)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "module "+modulePath {
			return true
		}
	}
	return false
}

// Binary builds the demo with `go build -o <bin> ./_example` in the
// repository root, once per test binary, and returns the binary's path. The
// build runs in workspace mode (the root go.work), whatever GOWORK the test
// was started with, so that it works whether or not _example is a module of
// its own.
func Binary(t testing.TB) string {
	t.Helper()
	root := RepoRoot(t)
	build.once.Do(func() {
		build.dir, build.err = os.MkdirTemp("", "chat-demotest-")
		if build.err != nil {
			return
		}
		build.bin = filepath.Join(build.dir, "demo")
		cmd := exec.Command("go", "build", "-buildvcs=false", "-o", build.bin, "./_example")
		cmd.Dir = root
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "GOWORK=") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./_example: %v\n%s", err, out)
		}
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.bin
}

// FreeAddr returns a 127.0.0.1:port address that nothing listens on right
// now, for the demo's -addr.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Demo is one running demo process.
type Demo struct {
	name string
	cmd  *exec.Cmd
	log  *tailWriter // the end of its stdout and stderr
	done chan struct{}
	err  error // exit status, once done is closed

	stopMu  sync.Mutex
	stopped bool
}

// Start runs the demo binary with `-addr <addrs joined by commas> args...`,
// one instance per address, with REDIS_URL unset so that only a -redis
// argument chooses the Redis, and waits until every instance answers
// /healthz with "ok". name labels the process in failures. At t.Cleanup it
// stops the process (see Stop), failing the test unless it exits 0, and
// shows the end of its log if the test failed.
func Start(t testing.TB, name string, addrs []string, args ...string) *Demo {
	t.Helper()
	bin := Binary(t)
	args = append([]string{"-addr", strings.Join(addrs, ",")}, args...)
	d := &Demo{name: name, log: &tailWriter{max: logTail}, done: make(chan struct{})}
	d.cmd = exec.Command(bin, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.cmd.Env = append(os.Environ(), "REDIS_URL=")
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start demo %s: %v", name, err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		start := time.Now()
		if err := d.Stop(); err != nil {
			t.Errorf("demo %s: %v", name, err)
		}
		t.Logf("demo %s stopped in %v", name, time.Since(start).Round(time.Millisecond))
		if t.Failed() {
			t.Logf("log of demo %s (%s), tail:\n%s", name, strings.Join(args, " "), d.log.String())
		}
	})
	for _, a := range addrs {
		d.waitHealthy(t, "http://"+a)
	}
	return d
}

// waitHealthy polls base/healthz until it answers 200 "ok".
func (d *Demo) waitHealthy(t testing.TB, base string) {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := client.Get(base + "/healthz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.TrimSpace(string(body)) == "ok" {
				return
			}
			err = fmt.Errorf("status %d: %s", resp.StatusCode, body)
		}
		select {
		case <-d.done:
			t.Fatalf("demo %s exited before %s/healthz answered (%v):\n%s", d.name, base, d.err, d.log.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/healthz: not ready after %v: %v\n%s", base, readyTimeout, err, d.log.String())
		}
	}
}

// Stop sends SIGTERM and waits for a graceful exit. It returns an error
// unless the process exits 0 within 15 s (it is then killed), or if it had
// already exited on its own. Stopping again returns nil.
func (d *Demo) Stop() error {
	d.stopMu.Lock()
	defer d.stopMu.Unlock()
	if d.stopped {
		return nil
	}
	d.stopped = true
	select {
	case <-d.done:
		return fmt.Errorf("exited on its own before the test stopped it: %v", d.err)
	default:
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-d.done:
	case <-time.After(stopTimeout):
		_ = d.cmd.Process.Kill()
		<-d.done
		return fmt.Errorf("did not exit within %v of SIGTERM; killed", stopTimeout)
	}
	if d.err != nil {
		return fmt.Errorf("exit after SIGTERM: %v (want status 0)", d.err)
	}
	return nil
}

// Kill ends the demo with SIGKILL, as a crash would: no goodbye to Redis,
// no close frames. The test's cleanup then expects nothing of it.
func (d *Demo) Kill() {
	d.stopMu.Lock()
	defer d.stopMu.Unlock()
	if d.stopped {
		return
	}
	d.stopped = true
	_ = d.cmd.Process.Kill()
	<-d.done
}

// PID is the process ID of the demo, to read its memory in /proc.
func (d *Demo) PID() int { return d.cmd.Process.Pid }

// tailWriter keeps the last max bytes written to it (at least; it trims
// once it holds twice that), so a chatty demo cannot fill the memory.
type tailWriter struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (w *tailWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b = append(w.b, p...)
	if len(w.b) > 2*w.max {
		w.b = append(w.b[:0], w.b[len(w.b)-w.max:]...)
	}
	return len(p), nil
}

// String returns the last max bytes written.
func (w *tailWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.b[max(0, len(w.b)-w.max):])
}
