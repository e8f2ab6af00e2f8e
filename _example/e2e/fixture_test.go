package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
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
)

var (
	buildDir  string
	buildOnce sync.Once
	demoBin   string
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "chat-e2e-build-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buildDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// repoRoot is the directory of the chat module: two levels up from here.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !strings.Contains(string(data), "module github.com/chatrelay/chat\n") {
		t.Fatalf("%s is not the root of github.com/chatrelay/chat (go.mod: %v)", root, err)
	}
	return root
}

// demoBinary builds ./_example once per test binary run.
func demoBinary(t *testing.T) string {
	t.Helper()
	root := repoRoot(t)
	buildOnce.Do(func() {
		demoBin = filepath.Join(buildDir, "demo")
		cmd := exec.Command("go", "build", "-buildvcs=false", "-o", demoBin, "./_example")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./_example: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return demoBin
}

// freePort returns a TCP port on 127.0.0.1 that nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// lockedBuffer collects a process's output from several goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// demo is one running demo process.
type demo struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	out    *lockedBuffer
	done   chan struct{}
	err    error // exit status, once done is closed
	urls   []string
	stopMu sync.Mutex
	waited bool
}

// startDemo runs the demo binary with args, one instance per address, and
// waits until every instance answers /healthz. At cleanup it stops the process
// with SIGTERM and fails the test unless it exits 0.
func startDemo(t *testing.T, name string, addrs []string, args ...string) *demo {
	t.Helper()
	bin := demoBinary(t)
	args = append([]string{"-addr", strings.Join(addrs, ",")}, args...)
	d := &demo{t: t, name: name, out: &lockedBuffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(bin, args...)
	d.cmd.Stdout = d.out
	d.cmd.Stderr = d.out
	d.cmd.Env = append(os.Environ(), "REDIS_URL=") // only -redis decides
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start demo %s: %v", name, err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		start := time.Now()
		defer func() { t.Logf("demo %s stopped in %v", name, time.Since(start).Round(time.Millisecond)) }()
		if err := d.stop(); err != nil {
			t.Errorf("demo %s: %v", name, err)
		}
		if t.Failed() {
			t.Logf("output of demo %s (%s):\n%s", name, strings.Join(args, " "), d.out.String())
		}
	})
	for _, a := range addrs {
		d.urls = append(d.urls, "http://"+a)
	}
	for _, u := range d.urls {
		d.waitHealthy(u)
	}
	return d
}

func (d *demo) waitHealthy(base string) {
	d.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
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
			d.t.Fatalf("demo %s exited before %s/healthz answered (%v):\n%s", d.name, base, d.err, d.out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("%s/healthz: not ready after 30 s: %v\n%s", base, err, d.out.String())
		}
	}
}

// stop sends SIGTERM and waits for a graceful exit; the demo must exit 0.
func (d *demo) stop() error {
	d.stopMu.Lock()
	defer d.stopMu.Unlock()
	if d.waited {
		return nil
	}
	d.waited = true
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
	case <-time.After(15 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
		return errors.New("did not exit within 15 s of SIGTERM; killed")
	}
	if d.err != nil {
		return fmt.Errorf("exit after SIGTERM: %v (want status 0)", d.err)
	}
	return nil
}

// instanceID asks an instance for its ID (GET /info).
func instanceID(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/info")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var info struct{ Instance string }
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil || info.Instance == "" {
		t.Fatalf("%s/info: %v %+v", base, err, info)
	}
	return info.Instance
}

// startRedis runs a throwaway redis-server on a free port and returns its
// address; it is killed (by PID) at cleanup.
func startRedis(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CHAT_REQUIRE_REDIS") == "1" {
			t.Fatal("redis-server not found on $PATH and CHAT_REQUIRE_REDIS=1")
		}
		t.Skip("redis-server not found on $PATH (apt-get install redis-server); set CHAT_REQUIRE_REDIS=1 to fail instead")
	}
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	out := &lockedBuffer{}
	cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("redis-server output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		reply, err := redisCommand(addr, "PING")
		if err == nil && reply == "+PONG" {
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s did not answer PING: %v %q\n%s", addr, err, reply, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// redisCommand sends one command to Redis over RESP and returns the first
// line of the reply (enough for PING, EXISTS and TTL).
func redisCommand(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c, b.String()); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}
