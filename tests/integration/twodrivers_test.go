package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

// binDriver is one run of the real driver binary.
type binDriver struct {
	t      *testing.T
	cmd    *exec.Cmd
	out    *bytes.Buffer // stdout and stderr; read only after exited
	exited chan struct{}
}

// buildDriverBinary builds the driver into a temporary directory.
func buildDriverBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ecs-localdisk-csi")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/ecs-localdisk-csi").CombinedOutput(); err != nil {
		t.Fatalf("building the driver: %v\n%s", err, out)
	}
	return bin
}

// runDriver starts the binary on the devices with the given state directory,
// socket, node ID and extra flags. The process is killed (by its PID) at
// test cleanup if it still runs.
func runDriver(t *testing.T, bin, stateDir, sock, node string, devices []string, extra ...string) *binDriver {
	t.Helper()
	d := &binDriver{t: t, out: &bytes.Buffer{}, exited: make(chan struct{})}
	d.cmd = exec.Command(bin, append([]string{"--endpoint=unix://" + sock, "--node-id=" + node, "--state-dir=" + stateDir,
		"--disk-source=static", "--devices=" + strings.Join(devices, ","), "--v=2"}, extra...)...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() { d.kill() })
	return d
}

// kill ends the driver with SIGKILL and waits (at most 10 s) for it.
func (d *binDriver) kill() {
	_ = syscall.Kill(d.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		d.t.Errorf("driver %d still runs 10s after SIGKILL", d.cmd.Process.Pid)
	}
}

// wait returns the driver's exit code once it has exited, or -1 with an
// error when it still runs after limit.
func (d *binDriver) wait(limit time.Duration) (int, error) {
	select {
	case <-d.exited:
		return d.cmd.ProcessState.ExitCode(), nil
	case <-time.After(limit):
		return -1, fmt.Errorf("driver %d still runs after %v", d.cmd.Process.Pid, limit)
	}
}

// output is what the driver printed; call it only after it exited.
func (d *binDriver) output() string { return d.out.String() }

// nodeAt asks whoever serves the socket for its node ID, over a new
// connection, so the answer comes from the process the path leads to now.
func nodeAt(sock string) (string, error) {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := csi.NewNodeClient(conn).NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	return info.GetNodeId(), err
}

// waitReady waits (at most 30 s) until the driver answers Probe ready and
// NodeGetInfo with its node ID on sock.
func (d *binDriver) waitReady(sock, node string) {
	d.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if err := d.probeOutcome(sock); err != nil {
			d.t.Fatalf("driver %d failed its start: %v\n%s", d.cmd.Process.Pid, err, d.output())
		}
		if got, err := nodeAt(sock); err == nil && got == node {
			return
		}
	}
	d.t.Fatalf("driver %d not ready on %s within 30s", d.cmd.Process.Pid, sock)
}

// probeOutcome waits (at most 30 s, polling every 20 ms) until the driver on
// sock either answers Probe ready (it returns nil) or fails it with a
// status other than UNAVAILABLE (it returns that error).
func (d *binDriver) probeOutcome(sock string) error {
	d.t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		d.t.Fatal(err)
	}
	defer conn.Close()
	id := csi.NewIdentityClient(conn)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case <-d.exited:
			d.t.Fatalf("driver exited with %v:\n%s", d.cmd.ProcessState, d.output())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := id.Probe(ctx, &csi.ProbeRequest{})
		cancel()
		if _, ok := status.FromError(err); err != nil && ok && status.Code(err) != codes.Unavailable && status.Code(err) != codes.DeadlineExceeded {
			return err
		}
		if err == nil && resp.GetReady().GetValue() {
			return nil
		}
	}
	d.t.Fatalf("driver %d neither ready nor failed on %s within 30s", d.cmd.Process.Pid, sock)
	return nil
}

// TestSecondDriverIsRefused: a second driver on the same state directory,
// on the same endpoint, or on both, exits with code 1 and a message naming
// what is taken, before it touches anything; the first keeps its socket and
// keeps answering. After the first is stopped, and after it is killed with
// SIGKILL, a new driver on the same directory and socket starts: the lock
// ends with its process and the stale socket is replaced.
func TestSecondDriverIsRefused(t *testing.T) {
	testutil.RequireRoot(t)
	bin := buildDriverBinary(t)
	dir := t.TempDir()
	devices := []string{testutil.NewLoop(t, dir, 64<<20).Path, testutil.NewLoop(t, dir, 64<<20).Path}
	stateDir, sock := filepath.Join(dir, "state"), filepath.Join(dir, "plugin", "csi.sock")

	a := runDriver(t, bin, stateDir, sock, "node-a", devices)
	a.waitReady(sock, "node-a")
	aSocket, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	aPID := strconv.Itoa(a.cmd.Process.Pid)

	cases := []struct {
		name, stateDir, sock string
		want                 []string
	}{
		{"same state dir and endpoint", stateDir, sock,
			[]string{stateDir + " is locked by process " + aPID, "only one driver may run on a state directory"}},
		{"same state dir", stateDir, filepath.Join(dir, "other-plugin", "csi.sock"),
			[]string{stateDir + " is locked by process " + aPID}},
		{"same endpoint", filepath.Join(dir, "other-state"), sock,
			[]string{"endpoint " + sock + " is served by another live process"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := runDriver(t, bin, c.stateDir, c.sock, "node-b", devices)
			code, err := b.wait(15 * time.Second)
			if err != nil {
				b.kill()
				t.Errorf("second driver was not refused: %v", err)
			} else if code != 1 {
				t.Errorf("second driver exited with %d; want 1:\n%s", code, b.output())
			}
			for _, w := range c.want {
				if !strings.Contains(b.output(), w) {
					t.Errorf("second driver's output does not say %q:\n%s", w, b.output())
				}
			}
			if now, err := os.Lstat(sock); err != nil || !os.SameFile(aSocket, now) {
				t.Errorf("first driver's socket replaced or removed (%v)", err)
			}
			if got, err := nodeAt(sock); err != nil || got != "node-a" {
				t.Errorf("socket answered node %q, %v; want the first driver, node-a", got, err)
			}
			if c.sock != sock {
				if _, err := os.Lstat(c.sock); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("refused driver left a socket at %s (%v)", c.sock, err)
				}
			}
			if c.stateDir != stateDir {
				if _, err := os.Lstat(filepath.Join(c.stateDir, "state.json")); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("refused driver wrote a node state (%v)", err)
				}
			}
		})
	}
	select {
	case <-a.exited:
		t.Fatalf("first driver exited:\n%s", a.output())
	default:
	}

	// Stopped as the kubelet does: it removes its own socket; the next
	// driver gets the directory.
	if err := syscall.Kill(a.cmd.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := a.wait(30 * time.Second); err != nil || code != 0 {
		t.Fatalf("first driver after SIGTERM: exit %d, %v:\n%s", code, err, a.output())
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after a clean stop: %v; want it removed", err)
	}
	next := runDriver(t, bin, stateDir, sock, "node-a", devices)
	next.waitReady(sock, "node-a")

	// Killed: the socket stays behind, stale, and the lock file keeps the
	// dead PID; neither stops the next driver.
	next.kill()
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("no stale socket after SIGKILL to test with: %v", err)
	}
	last := runDriver(t, bin, stateDir, sock, "node-a", devices)
	last.waitReady(sock, "node-a")
	if err := syscall.Kill(last.cmd.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := last.wait(30 * time.Second); err != nil || code != 0 {
		t.Errorf("last driver after SIGTERM: exit %d, %v:\n%s", code, err, last.output())
	}
}
