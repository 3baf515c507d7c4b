package driver

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// These tests drive the server NewServer returns over a unix socket, so
// every call passes through the same interceptors as in the driver binary.

// rpcServer serves d on a unix socket until the test ends and returns a
// client connection to it.
func rpcServer(t *testing.T, d *Driver) *grpc.ClientConn {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "csi.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := d.NewServer()
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// logCapture is klog's output during one test, safe to read while the
// server writes.
type logCapture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *logCapture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *logCapture) String() string {
	klog.Flush()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

func (c *logCapture) Len() int { return len(c.String()) }

// captureLogs sends klog's output (every severity) to the returned capture
// at verbosity v until the test ends.
func captureLogs(t *testing.T, v string) *logCapture {
	t.Helper()
	c := &logCapture{}
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	if err := fs.Set("v", v); err != nil {
		t.Fatal(err)
	}
	klog.LogToStderr(false)
	klog.SetOutputBySeverity("INFO", c)
	t.Cleanup(func() { fs.Set("v", "0"); testOutput() })
	return c
}

// TestServerSurvivesHandlerPanic injects a panic into a real handler
// (NodeUnstageVolume, through the fake mounter's unmount) and calls it
// through the real server: that one call answers INTERNAL, the panic and
// its stack are logged once and the call's failure once, the server keeps
// answering, and the volume's in-flight lock was released by the unwinding.
func TestServerSurvivesHandlerPanic(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	logs := captureLogs(t, "0")
	conn := rpcServer(t, f.d)
	ctx := context.Background()
	v := f.create("pvc", 0, nil)
	staging := filepath.Join(f.dir, "staging")
	if _, err := f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, VolumeCapability: testutil.MountCap("")}); err != nil {
		t.Fatal(err)
	}
	f.m.SetBefore(func(op, _ string) {
		if op == mounter.OpUnmount {
			panic("injected: unmount blew up")
		}
	})
	node := csi.NewNodeClient(conn)
	unstage := &csi.NodeUnstageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging}
	_, err := node.NodeUnstageVolume(ctx, unstage)
	wantCode(t, err, codes.Internal, "internal error")
	if strings.Contains(status.Convert(err).Message(), "blew up") {
		t.Errorf("the panic value reached the caller: %v", err)
	}
	if r, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{}); err != nil || !r.GetReady().GetValue() {
		t.Fatalf("Probe after the panic: %v, %v", r, err)
	}
	out := logs.String()
	for what, want := range map[string][]string{
		"panic":       {`"GRPC handler panicked" method="/csi.v1.Node/NodeUnstageVolume" panic="injected: unmount blew up"`},
		"stack":       {"(*Driver).NodeUnstageVolume("},
		"failed call": {`"GRPC failed"`, `method="/csi.v1.Node/NodeUnstageVolume" code="Internal"`},
	} {
		if n := linesWith(out, want...); n != 1 {
			t.Errorf("%s: %q logged %d times, want once:\n%s", what, want, n, out)
		}
	}
	// The lock taken by the panicking call was released: the retry works.
	f.m.SetBefore(nil)
	if _, err := node.NodeUnstageVolume(ctx, unstage); err != nil {
		t.Fatalf("NodeUnstageVolume after the panic: %v", err)
	}
}

// linesWith counts the lines of out that contain every one of want.
func linesWith(out string, want ...string) int {
	n := 0
	for _, l := range strings.Split(out, "\n") {
		all := true
		for _, w := range want {
			all = all && strings.Contains(l, w)
		}
		if all {
			n++
		}
	}
	return n
}

// gatedSource is a disk source whose Discover waits until release is
// closed, holding the inventory's Start in the middle.
type gatedSource struct {
	*disk.FakeSource
	entered, release   chan struct{}
	enterOnce, relOnce sync.Once
	fail               error // returned by Discover once released, if set
}

func (g *gatedSource) Discover(ctx context.Context) ([]disk.Disk, []error, error) {
	g.enterOnce.Do(func() { close(g.entered) })
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	if g.fail != nil {
		return nil, nil, g.fail
	}
	return g.FakeSource.Discover(ctx)
}

func (g *gatedSource) open() { g.relOnce.Do(func() { close(g.release) }) }

// wantNotReadyEverywhere calls every method of the Controller and Node
// services with an empty request: each answers UNAVAILABLE with message
// containing msg, except the capability queries, which answer; Identity
// answers, Probe with not ready.
func wantNotReadyEverywhere(t *testing.T, conn *grpc.ClientConn, msg string) {
	t.Helper()
	ctx := context.Background()
	for _, sd := range []grpc.ServiceDesc{csi.Controller_ServiceDesc, csi.Node_ServiceDesc} {
		for _, m := range sd.Methods {
			method := "/" + sd.ServiceName + "/" + m.MethodName
			err := conn.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{})
			if strings.HasSuffix(method, "GetCapabilities") {
				if err != nil {
					t.Errorf("%s before ready: %v", method, err)
				}
				continue
			}
			if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), msg) {
				t.Errorf("%s before ready: %v; want UNAVAILABLE mentioning %q", method, err, msg)
			}
		}
	}
	if _, err := csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{}); err != nil {
		t.Errorf("GetPluginInfo before ready: %v", err)
	}
}

// TestNodeGetInfoBeforeStart: the server is up and the inventory's Start
// has not run. NodeGetInfo (which dereferenced the unloaded record) and
// every other volume call answer UNAVAILABLE instead of panicking; the
// kubelet must never cache a volume limit read then.
func TestNodeGetInfoBeforeStart(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	inv := inventory.New(inventory.Config{Node: testNode, Source: f.src, Store: state.NewStore(t.TempDir()), Mounter: f.m})
	d, err := New(Config{Name: "x.csi", NodeID: testNode, Inventory: inv, Mounter: f.m})
	if err != nil {
		t.Fatal(err)
	}
	conn := rpcServer(t, d)
	_, err = csi.NewNodeClient(conn).NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{})
	wantCode(t, err, codes.Unavailable, "not ready")
	wantNotReadyEverywhere(t, conn, "not ready")
	r, err := csi.NewIdentityClient(conn).Probe(context.Background(), &csi.ProbeRequest{})
	if err != nil || r.GetReady().GetValue() {
		t.Fatalf("Probe before start: %v, %v; want not ready", r, err)
	}
}

// TestNodeGetInfoWhileStarting holds Start in the middle of discovery,
// after the state record has loaded, and calls NodeGetInfo: it answers
// UNAVAILABLE, or, if it waits on the inventory until discovery ends, the
// real limit; never the limit of a record not yet reconciled (0 here), and
// the real limit once Start has completed.
func TestNodeGetInfoWhileStarting(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	src := &gatedSource{FakeSource: disk.NewFakeSource(fakeDisk(0, gib, disk.MediaSSD), fakeDisk(1, gib, disk.MediaSSD)),
		entered: make(chan struct{}), release: make(chan struct{})}
	inv := inventory.New(inventory.Config{Node: testNode, Source: src, Store: state.NewStore(t.TempDir()), Mounter: f.m})
	t.Cleanup(inv.Stop)
	t.Cleanup(src.open)
	d, err := New(Config{Name: "x.csi", NodeID: testNode, Inventory: inv, Mounter: f.m})
	if err != nil {
		t.Fatal(err)
	}
	conn := rpcServer(t, d)
	started := make(chan error, 1)
	go func() { started <- inv.Start(context.Background()) }()
	<-src.entered
	node := csi.NewNodeClient(conn)
	type answer struct {
		r   *csi.NodeGetInfoResponse
		err error
	}
	answered := make(chan answer, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		r, err := node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
		answered <- answer{r, err}
	}()
	select {
	case a := <-answered:
		// Answered while discovery is held.
		if status.Code(a.err) != codes.Unavailable {
			t.Fatalf("NodeGetInfo during Start = %v, %v; want UNAVAILABLE, never a limit", a.r, a.err)
		}
		src.open()
	case <-time.After(time.Second):
		// Waiting on the inventory, which holds its lock through
		// discovery: it answers once discovery ends.
		src.open()
		a := <-answered
		if status.Code(a.err) != codes.Unavailable && (a.err != nil || a.r.GetMaxVolumesPerNode() != 2) {
			t.Fatalf("NodeGetInfo during Start = %v, %v; want UNAVAILABLE or the limit 2", a.r, a.err)
		}
	}
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	r, err := node.NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{})
	if err != nil || r.GetMaxVolumesPerNode() != 2 || r.GetNodeId() != testNode {
		t.Fatalf("NodeGetInfo after Start = %v, %v; want node %s with limit 2", r, err, testNode)
	}
}

// TestVolumeCallsAfterFailedStart: both copies of the state are corrupt, so
// Start fails for good. The server keeps serving: Probe answers
// FAILED_PRECONDITION, every volume call UNAVAILABLE with the reason, and
// nothing panics.
func TestVolumeCallsAfterFailedStart(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	store := state.NewStore(t.TempDir())
	for _, p := range []string{store.Path(), store.BackupPath()} {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("{torn"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	inv := inventory.New(inventory.Config{Node: testNode, Source: f.src, Store: store, Mounter: f.m})
	t.Cleanup(inv.Stop)
	d, err := New(Config{Name: "x.csi", NodeID: testNode, Inventory: inv, Mounter: f.m})
	if err != nil {
		t.Fatal(err)
	}
	if err := inv.Start(context.Background()); err == nil {
		t.Fatal("Start with both state copies corrupt succeeded")
	}
	conn := rpcServer(t, d)
	_, err = csi.NewNodeClient(conn).NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{})
	wantCode(t, err, codes.Unavailable, "start-up failed")
	wantNotReadyEverywhere(t, conn, "start-up failed")
	_, err = csi.NewIdentityClient(conn).Probe(context.Background(), &csi.ProbeRequest{})
	wantCode(t, err, codes.FailedPrecondition, "")
}

// TestLogBoundedPerCall sends calls carrying 1 MiB fields (names, IDs,
// paths, tokens, map keys and values, maps of thousands of entries, and
// secrets) through the real server at verbosity 4, where each call logs
// its request twice: the log grows by less than 8 KiB per call, and no
// secret value or key appears in it.
func TestLogBoundedPerCall(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	v := f.create("pvc", 0, nil)
	logs := captureLogs(t, "4")
	conn := rpcServer(t, f.d)
	ctrl, node := csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	const mib = 1 << 20
	big := func(c string) string { return strings.Repeat(c, mib) }
	secret := "s3cr3t-" + strings.Repeat("S", mib/2)
	secretKey := "secret-key-" + strings.Repeat("K", 64)
	secrets := map[string]string{"token": secret, secretKey: "v"}
	many := map[string]string{}
	for i := 0; len(many) < 3000; i++ {
		many[strings.Repeat("k", 200)+string(rune('a'+i%26))+strings.Repeat("z", i/26)] = strings.Repeat("v", 200)
	}
	mountCaps := []*csi.VolumeCapability{testutil.MountCap("")}
	calls := []func() error{
		func() error {
			_, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: big("n"), VolumeCapabilities: mountCaps, Secrets: secrets})
			return err
		},
		func() error {
			_, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-x", VolumeCapabilities: mountCaps,
				Parameters: map[string]string{big("p"): "x", "media": big("m")}, Secrets: secrets})
			return err
		},
		func() error {
			_, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-y", Parameters: many, Secrets: secrets})
			return err
		},
		func() error { // characters that JSON and klog both escape
			_, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: strings.Repeat("\x01\"\u0085\\", mib/4), Secrets: secrets,
				Parameters: map[string]string{strings.Repeat("\x02", mib): strings.Repeat("\u2028", mib/4)}})
			return err
		},
		func() error {
			_, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: big("d"), Secrets: secrets})
			return err
		},
		func() error {
			_, err := ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: big("7")})
			return err
		},
		func() error {
			_, err := ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"mkfsOptions": big("o")}})
			return err
		},
		func() error { // succeeds: the response echoes the request's maps
			_, err := ctrl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: v.VolumeId,
				VolumeCapabilities: mountCaps, VolumeContext: map[string]string{"c": big("c")}, Parameters: many, Secrets: secrets})
			return err
		},
		func() error {
			_, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: big("i"), StagingTargetPath: "/" + big("s"),
				VolumeCapability: testutil.MountCap("", big("f")), Secrets: secrets, PublishContext: map[string]string{"p": "q"}})
			return err
		},
		func() error {
			_, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: "/" + big("t"),
				StagingTargetPath: "/staging", VolumeCapability: testutil.MountCap(""), Secrets: secrets, VolumeContext: many})
			return err
		},
		func() error {
			_, err := node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.VolumeId, VolumePath: "/" + big("g")})
			return err
		},
		func() error {
			_, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: big("u"), TargetPath: "/" + big("t")})
			return err
		},
	}
	const n = 26
	before := logs.Len()
	succeeded := 0
	for i := 0; i < n; i++ {
		if err := calls[i%len(calls)](); err == nil {
			succeeded++
		} else if strings.Contains(err.Error(), "larger than max") {
			t.Fatalf("call %d did not reach the handler: %v", i%len(calls), err)
		}
	}
	if succeeded == 0 {
		t.Error("no call succeeded: the response path was not exercised")
	}
	out := logs.String()
	grown := len(out) - before
	if per := grown / n; per >= 8<<10 {
		t.Errorf("%d calls grew the log by %d bytes, %d per call; want < 8 KiB per call", n, grown, per)
	}
	for _, s := range []string{"s3cr3t", secretKey} {
		if strings.Contains(out, s) {
			t.Errorf("secret %.20q... in the log", s)
		}
	}
	t.Logf("%d calls grew the log by %d bytes, %d per call", n, grown, grown/n)
	for _, want := range []string{"***stripped***", "...(1048576 bytes)", "(3000 entries)"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s", want)
		}
	}
	if linesWith(out, `"GRPC failed"`, `method="/csi.v1.Controller/ListVolumes"`) == 0 {
		t.Error("the failed ListVolumes calls were not logged")
	}
}

// TestCallsDuringStartWaitForIt: with StartWait set, a NodeGetInfo that
// arrives while discovery is held (as the kubelet's registration does right
// after the socket appears) waits and is answered with the real limit once
// Start ends, not UNAVAILABLE; one waiting while the start fails answers
// UNAVAILABLE with the reason as soon as it fails; and one whose start
// takes longer than StartWait answers UNAVAILABLE after StartWait.
func TestCallsDuringStartWaitForIt(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	type answer struct {
		r   *csi.NodeGetInfoResponse
		err error
		at  time.Time
	}
	// starting starts an inventory whose discovery is held until the
	// returned source is opened, and asks NodeGetInfo once discovery has
	// begun; the answer must not come within 200 ms.
	starting := func(wait time.Duration, fail error) (*gatedSource, chan error, chan answer) {
		src := &gatedSource{FakeSource: disk.NewFakeSource(fakeDisk(0, gib, disk.MediaSSD), fakeDisk(1, gib, disk.MediaSSD)),
			entered: make(chan struct{}), release: make(chan struct{}), fail: fail}
		inv := inventory.New(inventory.Config{Node: testNode, Source: src, Store: state.NewStore(t.TempDir()), Mounter: f.m})
		d, err := New(Config{Name: "x.csi", NodeID: testNode, Inventory: inv, Mounter: f.m, StartWait: wait})
		if err != nil {
			t.Fatal(err)
		}
		node := csi.NewNodeClient(rpcServer(t, d))
		started, done := make(chan error, 1), make(chan struct{})
		go func() {
			defer close(done)
			started <- inv.Start(context.Background())
		}()
		// Before the state directory goes: discovery released and the
		// start over (it writes the state), then the inventory stopped.
		t.Cleanup(func() {
			src.open()
			<-done
			inv.Stop()
		})
		<-src.entered
		answered := make(chan answer, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			r, err := node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
			answered <- answer{r, err, time.Now()}
		}()
		select {
		case a := <-answered:
			t.Fatalf("NodeGetInfo answered while discovery is held: %v, %v", a.r, a.err)
		case <-time.After(200 * time.Millisecond):
		}
		return src, started, answered
	}

	src, started, answered := starting(time.Minute, nil)
	src.open()
	if a := <-answered; a.err != nil || a.r.GetMaxVolumesPerNode() != 2 {
		t.Fatalf("NodeGetInfo during Start = %v, %v; want the limit 2 once Start ends", a.r, a.err)
	}
	if err := <-started; err != nil {
		t.Fatal(err)
	}

	src, started, answered = starting(time.Minute, errors.New("no disks for you"))
	failedAt := time.Now()
	src.open()
	if err := <-started; err == nil {
		t.Fatal("a start whose discovery failed succeeded")
	}
	a := <-answered
	wantCode(t, a.err, codes.Unavailable, "no disks for you")
	if waited := a.at.Sub(failedAt); waited > 10*time.Second {
		t.Errorf("the call answered %v after the start failed; want at once", waited)
	}

	begun := time.Now()
	_, _, answered = starting(time.Second, nil)
	a = <-answered
	wantCode(t, a.err, codes.Unavailable, "not ready")
	if waited := a.at.Sub(begun); waited < time.Second || waited > 20*time.Second {
		t.Errorf("the call answered after %v; want after StartWait (1s)", waited)
	}
}
