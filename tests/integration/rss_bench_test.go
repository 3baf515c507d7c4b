package integration

import (
	"context"
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

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

// BenchmarkIdleRSS builds the driver, runs its node plugin as the quick
// start does (static disk source, no cloud, no Kubernetes) over 24 loop
// disks, makes it answer a few calls (NodeGetInfo, GetCapacity), leaves it
// idle for 5 s and prints, from /proc/PID/status, its resident memory
// (VmRSS; target under 30 MiB), split into its private memory (RssAnon:
// heap, stacks) and the pages of its executable that are mapped in
// (RssFile: shared with every other process running the same file, and
// dropped first under memory pressure), and its peak (VmHWM). The floor,
// measured in the same run, is testdata/rssfloor: a program that links the
// same third-party packages, runs their initialisation and does nothing.
// Both are built as the image builds the driver (static, stripped): the
// memory of a file-backed page count depends on the size and layout of the
// executable.
func BenchmarkIdleRSS(b *testing.B) {
	testutil.RequireRoot(b)
	dir := b.TempDir()
	bin := filepath.Join(dir, "ecs-localdisk-csi")
	floor := filepath.Join(dir, "rssfloor")
	for out, pkg := range map[string]string{bin: "../../cmd/ecs-localdisk-csi", floor: "./testdata/rssfloor"} {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // as the Dockerfile
		if msg, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("building %s: %v\n%s", pkg, err, msg)
		}
	}
	checkFloorImports(b)
	var devices []string
	for _, l := range testutil.NewLoopRun(b, dir, 64<<20, 24) {
		devices = append(devices, l.Path)
	}
	fields := []string{"VmRSS", "RssAnon", "RssFile", "VmHWM"}
	most, least := map[string]int64{}, map[string]int64{}
	runs := 0
	for b.Loop() { // the function runs once: the table below is printed once
		runs++
		for f, kib := range idleRSS(b, bin, dir, devices, fields) {
			most[f] = max(most[f], kib)
		}
		for f, kib := range idleFloor(b, floor, fields) {
			least[f] = max(least[f], kib)
		}
	}
	fmt.Printf("idle memory, MiB (largest of %d runs)   driver   floor (its libraries alone)\n", runs)
	for _, f := range fields {
		fmt.Printf("  %-38s %6.1f   %6.1f\n", f, float64(most[f])/1024, float64(least[f])/1024)
		b.ReportMetric(float64(most[f])/1024, "MiB-"+f)
	}
}

// checkFloorImports fails unless the floor program imports exactly the
// third-party packages that the node driver's own packages import.
func checkFloorImports(b *testing.B) {
	const own = "github.com/ecs-localdisk/"
	thirdParty := func(imports []string, into map[string]bool) {
		for _, p := range imports {
			if first, _, _ := strings.Cut(p, "/"); strings.Contains(first, ".") && !strings.HasPrefix(p, own) {
				into[p] = true
			}
		}
	}
	list := func(args ...string) [][]string {
		out, err := exec.Command("go", append([]string{"list", "-f", `{{.ImportPath}} {{join .Imports " "}}`}, args...)...).Output()
		if err != nil {
			b.Fatalf("go list %v: %v", args, err)
		}
		var pkgs [][]string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			pkgs = append(pkgs, strings.Fields(l))
		}
		return pkgs
	}
	driver, floor := map[string]bool{}, map[string]bool{}
	for _, p := range list("-deps", "../../cmd/ecs-localdisk-csi") {
		if strings.HasPrefix(p[0], own) {
			thirdParty(p[1:], driver)
		}
	}
	thirdParty(list("./testdata/rssfloor")[0][1:], floor)
	for p := range driver {
		if !floor[p] {
			b.Fatalf("testdata/rssfloor does not import %s, which the node driver imports: add it", p)
		}
	}
	for p := range floor {
		if !driver[p] {
			b.Fatalf("testdata/rssfloor imports %s, which the node driver does not: remove it", p)
		}
	}
}

// idleFloor runs the floor program for as long as idleRSS lets the driver
// idle and returns the fields of its /proc/PID/status, in KiB.
func idleFloor(b *testing.B, floor string, fields []string) map[string]int64 {
	cmd := exec.Command(floor)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	time.Sleep(5 * time.Second)
	out := map[string]int64{}
	for _, f := range fields {
		out[f] = procStatusKiB(b, cmd.Process.Pid, f)
	}
	return out
}

// idleRSS runs the driver once and returns the fields of its
// /proc/PID/status, in KiB, once it is idle.
func idleRSS(b *testing.B, bin, dir string, devices []string, fields []string) map[string]int64 {
	state := filepath.Join(dir, "state")
	os.RemoveAll(state)
	sock := filepath.Join(dir, "csi.sock")
	log, err := os.Create(filepath.Join(dir, "driver.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(bin, "--endpoint=unix://"+sock, "--node-id=rss-node", "--state-dir="+state,
		"--disk-source=static", "--devices="+strings.Join(devices, ","), "--v=2")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	id, ctrl, node := csi.NewIdentityClient(conn), csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		r, err := id.Probe(cctx, &csi.ProbeRequest{})
		cancel()
		if err == nil && r.GetReady().GetValue() {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("driver not ready in 30 s: %v", err)
		}
	}
	if _, err := node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{}); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if c, err := ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{}); err != nil || c.AvailableCapacity != int64(len(devices))*64<<20 {
			b.Fatalf("GetCapacity: %v %v", c, err)
		}
	}
	time.Sleep(5 * time.Second)
	out := map[string]int64{}
	for _, f := range fields {
		out[f] = procStatusKiB(b, cmd.Process.Pid, f)
	}
	return out
}

// procStatusKiB reads field (in kB) of /proc/pid/status.
func procStatusKiB(b *testing.B, pid int, field string) int64 {
	s, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(s), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
