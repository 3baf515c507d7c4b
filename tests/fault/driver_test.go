package fault

import (
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
	"google.golang.org/grpc/credentials/insecure"
)

// driverBinary is the driver built with the crash points compiled in, once
// per test binary (TestMain removes it).
var driverBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fault-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	driverBinary = filepath.Join(dir, "ecs-localdisk-csi")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func buildDriver(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(driverBinary); err == nil {
		return
	}
	cmd := exec.Command("go", "build", "-tags", "crashpoints", "-o", driverBinary, "../../cmd/ecs-localdisk-csi")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the driver: %v\n%s", err, out)
	}
}

// driver is one run of the driver binary, leader of its own process group
// so that killing the group also kills the mkfs or wipe it runs.
type driver struct {
	cmd    *exec.Cmd
	exited chan struct{}
	log    string
	conn   *grpc.ClientConn
	id     csi.IdentityClient
	ctrl   csi.ControllerClient
	node   csi.NodeClient
}

// start runs the driver over the harness's devices and state directory and
// waits until it is ready. It returns an error when the driver died before
// that (a crash point hit during start-up).
func (h *harness) start() error {
	h.runs++
	log := filepath.Join(h.dir, "logs", fmt.Sprintf("driver-%04d.log", h.runs))
	if err := os.MkdirAll(filepath.Dir(log), 0o755); err != nil {
		return err
	}
	f, err := os.Create(log)
	if err != nil {
		return err
	}
	defer f.Close()
	var devices []string
	for _, l := range h.loops {
		devices = append(devices, l.Path)
	}
	sock := filepath.Join(h.dir, "csi.sock")
	cmd := exec.Command(driverBinary, "--endpoint=unix://"+sock, "--node-id="+nodeID,
		"--state-dir="+h.stateDir(), "--disk-source=static", "--devices="+strings.Join(devices, ","), "--v=2")
	cmd.Env = append(os.Environ(), "ECS_LOCALDISK_CRASHPOINT_FILE="+h.crashFile())
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	d := &driver{cmd: cmd, exited: make(chan struct{}), log: log}
	go func() { _ = cmd.Wait(); close(d.exited) }()
	h.drv = d
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	d.conn, d.id, d.ctrl, d.node = conn, csi.NewIdentityClient(conn), csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if d.dead() {
			return errDied
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := d.id.Probe(ctx, &csi.ProbeRequest{})
		cancel()
		if err == nil && resp.GetReady().GetValue() {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("driver not ready after 30s; log %s:\n%s", log, tail(log))
}

var errDied = errors.New("driver died")

func (d *driver) dead() bool {
	select {
	case <-d.exited:
		return true
	default:
		return false
	}
}

// kill ends the driver's process group with SIGKILL and waits for the
// driver to be gone.
func (d *driver) kill() {
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
	<-d.exited
	d.conn.Close()
	waitGroupGone(d.cmd.Process.Pid)
}

// stop ends the driver with SIGTERM, as the kubelet does, and waits.
func (d *driver) stop() error {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		d.kill()
		return fmt.Errorf("driver did not stop within 20s of SIGTERM")
	}
	d.conn.Close()
	waitGroupGone(d.cmd.Process.Pid)
	return nil
}

// waitGroupGone waits (at most 10 s) until no process of the group is left,
// so that a killed mkfs cannot still write when the next driver starts.
func waitGroupGone(pgid int) {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if len(groupProcesses(pgid)) == 0 {
			return
		}
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
}

// groupProcesses lists the commands of the live processes of a process
// group.
func groupProcesses(pgid int) []string {
	entries, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces and parens.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 3 || f[0] == "Z" || f[2] != strconv.Itoa(pgid) {
			continue
		}
		out = append(out, s[strings.IndexByte(s, '(')+1:i])
	}
	return out
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}
