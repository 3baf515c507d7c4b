package mounter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
)

func TestFakeFormatMountLifecycle(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	f.AddDevice("/dev/a", 1<<30, 253, 1)
	f.SetContent("/dev/a", "data")
	if p, err := f.Probe(ctx, "/dev/a"); err != nil || len(p.Signatures) != 0 {
		t.Fatalf("blank: %+v %v", p, err)
	}
	if err := f.Format(ctx, "/dev/a", "ext4", "U", 1<<29, []string{"-L", "x"}); err != nil {
		t.Fatal(err)
	}
	d, _ := f.Device("/dev/a")
	if d.Probe.FSType != "ext4" || d.Probe.UUID != "U" || d.FSSize != 1<<29 || d.Content != "data" {
		t.Fatalf("after format: %+v", d)
	}
	if err := f.Format(ctx, "/dev/a", "xfs", "V", 0, nil); !errors.Is(err, ErrNotBlank) {
		t.Fatalf("second format: %v", err)
	}
	if err := f.Format(ctx, "/dev/none", "xfs", "V", 0, nil); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing device: %v", err)
	}
	if err := f.Mount("/dev/a", "/stage", "xfs", nil); err == nil {
		t.Fatal("mounted ext4 as xfs")
	}
	if err := f.Mount("/dev/a", "/stage/", "ext4", []string{"noatime"}); err != nil {
		t.Fatal(err)
	}
	if err := f.BindMount("/stage", "/pod", true); err != nil {
		t.Fatal(err)
	}
	infos, _ := f.MountInfo()
	if len(infos) != 2 {
		t.Fatalf("mounts: %+v", infos)
	}
	st, pod := infos[0], infos[1]
	if st.MountPoint != "/stage" || st.Major != 253 || st.Minor != 1 || strings.Join(st.MountOptions, ",") != "rw,noatime" || st.FsType != "ext4" {
		t.Fatalf("staging entry %+v", st)
	}
	if pod.MountPoint != "/pod" || pod.Major != 253 || pod.Minor != 1 || strings.Join(pod.MountOptions, ",") != "ro" || pod.ID == st.ID {
		t.Fatalf("bind entry %+v", pod)
	}
	// Uses finds both through major:minor.
	if uses, err := Uses(f, "/dev/a"); err != nil || len(uses) != 2 {
		t.Fatalf("uses: %+v %v", uses, err)
	}
	// Mounted: Wipe refuses, as the real one does.
	if err := f.Wipe(ctx, "/dev/a", CleanupZero, WipeOptions{}); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("wipe while mounted: %v", err)
	}
	infos[0].MountOptions[0] = "changed" // a copy
	if again, _ := f.MountInfo(); again[0].MountOptions[0] != "rw" {
		t.Fatal("MountInfo returned the fake's own slices")
	}
	for _, p := range []string{"/pod", "/stage"} {
		if err := f.Unmount(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Unmount("/pod"); err == nil {
		t.Fatal("unmount of nothing worked")
	}
	if err := f.Wipe(ctx, "/dev/a", CleanupSignatures, WipeOptions{}); err != nil {
		t.Fatal(err)
	}
	if d, _ := f.Device("/dev/a"); len(d.Probe.Signatures) != 0 || d.Content != "data" || d.FSSize != 0 {
		t.Fatalf("after signatures wipe: %+v", d)
	}
	want := []string{
		"probe /dev/a",
		"format /dev/a ext4 [-L x] size=536870912",
		"format /dev/a xfs []",
		"format /dev/none xfs []",
		"mount /dev/a /stage xfs []",
		"mount /dev/a /stage/ ext4 [noatime]",
		"bind /stage /pod ro=true",
		"wipe /dev/a zero",
		"unmount /pod",
		"unmount /stage",
		"unmount /pod",
		"wipe /dev/a signatures",
	}
	if got := f.Calls(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestFakeWipePolicies(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		policy  CleanupPolicy
		content string
	}{{CleanupSignatures, "data"}, {CleanupDiscard, ""}, {CleanupZero, ""}, {CleanupShred, ""}} {
		f := NewFake()
		f.AddDevice("/dev/a", 100, 8, 0)
		f.SetSignatures("/dev/a", disk.Probe{Signatures: []string{"gpt", "PMBR"}})
		f.SetContent("/dev/a", "data")
		f.SetDeviceReadOnly("/dev/a", true)
		if err := f.Format(ctx, "/dev/a", "ext4", "U", 0, nil); !errors.Is(err, ErrNotBlank) {
			t.Fatalf("format over gpt: %v", err)
		}
		if err := f.Wipe(ctx, "/dev/a", c.policy, WipeOptions{}); err != nil {
			t.Fatal(err)
		}
		d, _ := f.Device("/dev/a")
		if len(d.Probe.Signatures) != 0 || d.Content != c.content || d.ReadOnly {
			t.Errorf("%s: %+v", c.policy, d)
		}
	}
	f := NewFake()
	f.AddDevice("/dev/a", 100, 8, 0)
	if err := f.Wipe(ctx, "/dev/a", "none", WipeOptions{}); !errors.Is(err, ErrUnknownPolicy) {
		t.Fatalf("unknown policy: %v", err)
	}
	if err := f.Format(ctx, "/dev/a", "btrfs", "U", 0, nil); !errors.Is(err, ErrUnsupportedFS) {
		t.Fatalf("btrfs: %v", err)
	}
}

func TestFakeBlockBind(t *testing.T) {
	f := NewFake()
	f.AddDevice("/dev/b", 4096, 259, 3)
	target := filepath.Join(t.TempDir(), "dev")
	if _, err := f.DeviceSize(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("size before the bind: %v", err)
	}
	if err := f.BindMount("/dev/b", target, false); err != nil {
		t.Fatal(err)
	}
	if n, err := f.DeviceSize(target); err != nil || n != 4096 {
		t.Fatalf("size through the bind: %d %v", n, err)
	}
	if n, err := f.DeviceNumber(target); err != nil || n != unix.Mkdev(259, 3) {
		t.Fatalf("number through the bind: %d %v", n, err)
	}
	if uses, err := Uses(f, "/dev/b"); err != nil || len(uses) != 1 || !uses[0].DeviceNode {
		t.Fatalf("uses: %+v %v", uses, err)
	}
	if err := f.Unmount(target); err != nil {
		t.Fatal(err)
	}
	if _, err := f.DeviceNumber(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("number after unbinding: %v", err)
	}
	if err := f.BindMount("/nowhere", target, false); err == nil {
		t.Fatal("bind of something that is neither a device nor a mount worked")
	}
	dir := t.TempDir()
	if _, err := f.DeviceNumber(dir); !errors.Is(err, ErrNotBlockDevice) {
		t.Fatalf("number of a directory: %v", err)
	}
}

func TestFakeErrorInjection(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	f.AddDevice("/dev/a", 100, 8, 0)
	boom, once := errors.New("boom"), errors.New("once")
	f.SetError(OpFormat, boom)
	f.FailNext(OpFormat, once)
	if err := f.Format(ctx, "/dev/a", "ext4", "U", 0, nil); err != once {
		t.Fatalf("first: %v", err)
	}
	if err := f.Format(ctx, "/dev/a", "ext4", "U", 0, nil); err != boom {
		t.Fatalf("second: %v", err)
	}
	f.SetError(OpFormat, nil)
	if err := f.Format(ctx, "/dev/a", "ext4", "U", 0, nil); err != nil {
		t.Fatalf("cleared: %v", err)
	}
	// A failed call is recorded and changes nothing.
	if d, _ := f.Device("/dev/a"); d.Probe.FSType != "ext4" {
		t.Fatalf("device %+v", d)
	}
	if n := len(f.Calls()); n != 3 {
		t.Fatalf("%d calls recorded", n)
	}
	for _, op := range []string{OpProbe, OpMount, OpBind, OpUnmount, OpWipe, OpSetRO, OpMountInfo, OpStats, OpSize, OpNumber} {
		f.FailNext(op, fmt.Errorf("fail %s", op))
	}
	f.Stats = FSStats{TotalBytes: 10}
	errs := []error{}
	_, err := f.Probe(ctx, "/dev/a")
	errs = append(errs, err, f.Mount("/dev/a", "/m", "ext4", nil), f.BindMount("/dev/a", "/b", false), f.Unmount("/m"),
		f.Wipe(ctx, "/dev/a", CleanupZero, WipeOptions{}), f.SetDeviceReadOnly("/dev/a", true))
	_, err = f.MountInfo()
	errs = append(errs, err)
	_, err = f.FSStats("/m")
	errs = append(errs, err)
	_, err = f.DeviceSize("/dev/a")
	errs = append(errs, err)
	_, err = f.DeviceNumber("/dev/a")
	errs = append(errs, err)
	for i, op := range []string{OpProbe, OpMount, OpBind, OpUnmount, OpWipe, OpSetRO, OpMountInfo, OpStats, OpSize, OpNumber} {
		if errs[i] == nil || errs[i].Error() != "fail "+op {
			t.Errorf("%s: %v", op, errs[i])
		}
	}
	// All consumed: everything works again.
	if s, err := f.FSStats("/m"); err != nil || s.TotalBytes != 10 {
		t.Fatalf("stats: %+v %v", s, err)
	}
	if infos, err := f.MountInfo(); err != nil || len(infos) != 0 {
		t.Fatalf("mountinfo: %+v %v", infos, err)
	}
}

func TestFakeDelayAndHook(t *testing.T) {
	f := NewFake()
	f.AddDevice("/dev/a", 100, 8, 0)
	f.AddDevice("/dev/b", 100, 8, 1)
	f.SetDelay(OpFormat, 100*time.Millisecond)
	start := time.Now()
	if err := f.Format(context.Background(), "/dev/a", "xfs", "U", 0, nil); err != nil || time.Since(start) < 100*time.Millisecond {
		t.Fatalf("slow format: %v after %v", err, time.Since(start))
	}
	// A cancelled context ends the wait and the format.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	f.SetDelay(OpFormat, time.Hour)
	if err := f.Format(ctx, "/dev/b", "xfs", "U", 0, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled slow format: %v", err)
	}
	if d, _ := f.Device("/dev/b"); d.Probe.FSType != "" {
		t.Fatal("a cancelled format formatted")
	}
	f.SetDelay(OpFormat, 0)
	// A hook holding one device's format does not hold the fake.
	entered, gate := make(chan struct{}), make(chan struct{})
	f.SetBefore(func(op, arg string) {
		if op == OpFormat && arg == "/dev/b" {
			close(entered)
			<-gate
		}
	})
	done := make(chan error)
	go func() { done <- f.Format(context.Background(), "/dev/b", "ext4", "U", 0, nil) }()
	<-entered
	if _, err := f.Probe(context.Background(), "/dev/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.MountInfo(); err != nil {
		t.Fatal(err)
	}
	close(gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestFakeConcurrent runs many goroutines over the fake; go test -race checks
// its locking.
func TestFakeConcurrent(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	f.SetBefore(func(string, string) {})
	f.SetDelay(OpMount, time.Millisecond)
	const n = 16
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		dev, target := fmt.Sprintf("/dev/d%d", i), fmt.Sprintf("/m/%d", i)
		f.AddDevice(dev, 1<<20, 8, uint32(i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				if err := f.Format(ctx, dev, "ext4", "U", 0, nil); err != nil {
					t.Error(err)
					return
				}
				if err := f.Mount(dev, target, "ext4", nil); err != nil {
					t.Error(err)
					return
				}
				f.MountInfo()
				f.Calls()
				f.FSStats(target)
				if _, err := f.DeviceNumber(dev); err != nil {
					t.Error(err)
				}
				if err := f.Unmount(target); err != nil {
					t.Error(err)
					return
				}
				if err := f.Wipe(ctx, dev, CleanupDiscard, WipeOptions{}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if infos, _ := f.MountInfo(); len(infos) != 0 {
		t.Fatalf("mounts left: %d", len(infos))
	}
	if got := len(f.Calls()); got != n*20*4 {
		t.Fatalf("%d calls, want %d", got, n*20*4)
	}
}
