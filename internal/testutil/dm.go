package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// DMLinear maps a dm-linear device over the whole of dev, so that dev has a
// real holder, removes it when the test ends, and returns the dm device's
// kernel name (dm-N). Without dmsetup the test fails under CI (CI installs
// it) and skips elsewhere; it loads dm_mod when the kernel has it as a
// module, and on a kernel without device-mapper (a kernel feature, not a
// privilege: some CI and sandbox kernels lack it) it skips with that reason.
func DMLinear(t testing.TB, dev string) string {
	t.Helper()
	RequireRoot(t)
	if _, err := exec.LookPath("dmsetup"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("dmsetup is missing; .ci/run installs it (Debian package dmsetup)")
		}
		t.Skip("needs dmsetup (Debian package dmsetup; CI installs it)")
	}
	if _, err := os.Stat("/sys/class/misc/device-mapper"); err != nil {
		// Built as a module and not loaded yet: load it. A kernel without
		// it (and without modules, as on this project's CI machines)
		// leaves only the skip; TestExclusivelyHeldDiskIsNeverHandedOut
		// shows the holder's claim on every kernel.
		modprobe := exec.Command("modprobe", "dm_mod")
		loadErr := modprobe.Run()
		if _, err := os.Stat("/sys/class/misc/device-mapper"); err != nil {
			t.Skipf("needs a kernel with device-mapper (a kernel feature, not a privilege: some CI and sandbox kernels lack it; modprobe dm_mod: %v): %v", loadErr, err)
		}
	}
	out, err := exec.Command("blockdev", "--getsz", dev).Output()
	sectors := strings.TrimSpace(string(out))
	if _, perr := strconv.ParseInt(sectors, 10, 64); err != nil || perr != nil {
		t.Fatalf("size of %s: %q %v", dev, out, err)
	}
	name := "testholder-" + filepath.Base(dev)
	if out, err := exec.Command("dmsetup", "create", name, "--table", "0 "+sectors+" linear "+dev+" 0").CombinedOutput(); err != nil {
		t.Fatalf("dmsetup create %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() {
		// udev may hold the new device open for a moment: retry, bounded.
		for i := 0; i < 50; i++ {
			if exec.Command("dmsetup", "remove", name).Run() == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("dmsetup remove %s kept failing", name)
	})
	entries, err := os.ReadDir(filepath.Join("/sys/block", filepath.Base(dev), "holders"))
	if err != nil || len(entries) != 1 {
		t.Fatalf("holders of %s after dmsetup create: %v %v", dev, entries, err)
	}
	return entries[0].Name()
}
