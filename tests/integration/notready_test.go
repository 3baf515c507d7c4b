package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// TestBinaryServesWithCorruptState runs the driver binary over a state
// directory whose two copies are both corrupt, so its inventory never
// starts. The process stays up and keeps answering: Probe says
// FAILED_PRECONDITION with the reason; NodeGetInfo (which dereferenced the
// unloaded record and ended the process) and the other volume calls answer
// UNAVAILABLE; after them Probe still answers and SIGTERM ends the driver
// cleanly. It needs no disk and no root.
func TestBinaryServesWithCorruptState(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "ecs-localdisk-csi")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/ecs-localdisk-csi").CombinedOutput(); err != nil {
		t.Fatalf("building the driver: %v\n%s", err, out)
	}
	stateDir := filepath.Join(dir, "state")
	store := state.NewStore(stateDir)
	for _, p := range []string{store.Path(), store.BackupPath()} {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("{torn"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	logPath := filepath.Join(dir, "driver.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	sock := filepath.Join(dir, "csi.sock")
	cmd := exec.Command(bin, "--endpoint=unix://"+sock, "--node-id="+node, "--state-dir="+stateDir,
		"--disk-source=static", "--devices="+filepath.Join(dir, "no-such-disk*"), "--v=2")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	alive := func(when string) {
		t.Helper()
		select {
		case <-exited:
			log, _ := os.ReadFile(logPath)
			t.Fatalf("driver exited %s (%v); log:\n%s", when, cmd.ProcessState, log)
		default:
		}
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	id, ctrl, nodeClient := csi.NewIdentityClient(conn), csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	call := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		t.Cleanup(cancel)
		return ctx
	}

	// Wait until start-up has failed: Probe then says why.
	deadline := time.Now().Add(30 * time.Second)
	for {
		alive("while starting")
		_, err := id.Probe(call(), &csi.ProbeRequest{})
		if status.Code(err) == codes.FailedPrecondition {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Probe did not report the failed start-up within 30s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	_, err = nodeClient.NodeGetInfo(call(), &csi.NodeGetInfoRequest{})
	alive("after NodeGetInfo")
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "start-up failed") {
		t.Errorf("NodeGetInfo = %v; want UNAVAILABLE naming the failed start-up", err)
	}
	_, err = ctrl.GetCapacity(call(), &csi.GetCapacityRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("GetCapacity = %v; want UNAVAILABLE", err)
	}
	_, err = nodeClient.NodeUnstageVolume(call(), &csi.NodeUnstageVolumeRequest{VolumeId: "v", StagingTargetPath: filepath.Join(dir, "staging")})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("NodeUnstageVolume = %v; want UNAVAILABLE", err)
	}
	alive("after the volume calls")
	if _, err := id.Probe(call(), &csi.ProbeRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Probe after the volume calls = %v; want FAILED_PRECONDITION", err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		t.Fatal("driver did not stop within 20s of SIGTERM")
	}
	log, _ := os.ReadFile(logPath)
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("driver exit code %d after SIGTERM, want 0; log:\n%s", code, log)
	}
	if strings.Contains(string(log), "panic") {
		t.Errorf("the driver logged a panic:\n%s", log)
	}
	if !strings.Contains(string(log), `method="/csi.v1.Node/NodeGetInfo" code="Unavailable"`) {
		t.Errorf("the refused NodeGetInfo was not logged:\n%s", log)
	}
}
