package driver

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

func (f *fixture) format(id string) state.Format {
	f.t.Helper()
	rec, _ := f.inv.Snapshot()
	for _, d := range rec.Disks {
		if d.Volume != nil && d.Volume.ID == id {
			return d.Volume.Format
		}
	}
	f.t.Fatalf("volume %s not in the state", id)
	return ""
}

func (f *fixture) stage(id string) error {
	_, err := f.d.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: id,
		StagingTargetPath: filepath.Join(f.dir, "staging"), VolumeCapability: testutil.MountCap("ext4")})
	return err
}

// TestFormatProgressIsRecorded: the state says "started" while mkfs runs
// and "done" after it; a failed mkfs leaves "started".
func TestFormatProgressIsRecorded(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	v := f.create("pvc", 0, nil)
	var during state.Format
	f.m.SetBefore(func(op, arg string) {
		if op == "format" {
			during = f.format(v.VolumeId)
		}
	})
	f.m.FailNext("format", errors.New("mkfs died"))
	if err := f.stage(v.VolumeId); err == nil {
		t.Fatal("stage with a failing mkfs succeeded")
	}
	if during != state.FormatStarted || f.format(v.VolumeId) != state.FormatStarted {
		t.Fatalf("format during mkfs %q, after its failure %q; want started, started", during, f.format(v.VolumeId))
	}
	if err := f.stage(v.VolumeId); err != nil {
		t.Fatal(err)
	}
	if got := f.format(v.VolumeId); got != state.FormatDone {
		t.Fatalf("format after mkfs %q; want done", got)
	}
}

// TestInterruptedFormatIsMadeAgain: a disk whose mkfs was cut short (state
// "started", a partial filesystem on it) is wiped and formatted again; a
// complete filesystem of the volume ("done") is never formatted again.
func TestInterruptedFormatIsMadeAgain(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	v := f.create("pvc", 0, nil)
	if err := f.inv.SetFormat(v.VolumeId, state.FormatStarted); err != nil {
		t.Fatal(err)
	}
	vol, err := f.inv.Lookup(v.VolumeId)
	if err != nil {
		t.Fatal(err)
	}
	// Something else on the disk than what that mkfs writes (its UUID) is
	// not a partial filesystem of the driver's: refused, nothing wiped.
	f.m.SetSignatures("/dev/fake0", disk.Probe{FSType: "ext4", UUID: "someone-elses", Signatures: []string{"ext4"}})
	wantCode(t, f.stage(v.VolumeId), codes.FailedPrecondition, "someone-elses")
	if calls := strings.Join(f.m.Calls(), ";"); strings.Contains(calls, "wipe") || strings.Contains(calls, "format ") {
		t.Fatalf("calls %q on a disk whose cut-short mkfs was followed by someone else's data", calls)
	}
	f.m.SetSignatures("/dev/fake0", disk.Probe{FSType: "ext4", UUID: vol.FSUUID, Signatures: []string{"ext4"}})
	if err := f.stage(v.VolumeId); err != nil {
		t.Fatal(err)
	}
	calls := f.m.Calls()
	wipe := slices.IndexFunc(calls, func(c string) bool { return c == "wipe /dev/fake0 signatures" })
	format := slices.IndexFunc(calls, func(c string) bool { return strings.HasPrefix(c, "format") })
	if wipe < 0 || format < wipe {
		t.Fatalf("calls %q; want a wipe, then a format", calls)
	}
	if got := f.format(v.VolumeId); got != state.FormatDone {
		t.Fatalf("format %q; want done", got)
	}
}

// TestForeignUUIDIsNotMounted: a filesystem of the right type but not the
// volume's (another volume's disk, or a state older than the disk) is
// refused with FAILED_PRECONDITION naming both UUIDs; nothing is formatted
// or mounted.
func TestForeignUUIDIsNotMounted(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	v := f.create("pvc", 0, nil)
	f.m.SetSignatures("/dev/fake0", disk.Probe{FSType: "ext4", UUID: "11111111-2222-3333-4444-555555555555", Signatures: []string{"ext4"}})
	err := f.stage(v.VolumeId)
	wantCode(t, err, codes.FailedPrecondition, "11111111-2222-3333-4444-555555555555")
	for _, c := range f.m.Calls() {
		if strings.HasPrefix(c, "format") || strings.HasPrefix(c, "mount") || strings.HasPrefix(c, "wipe") {
			t.Fatalf("call %q on a disk holding a foreign filesystem", c)
		}
	}
}

// TestRemadeFormatLooksAgainBeforeWiping: between NodeStage's first look at
// a disk whose mkfs was cut short and the wipe before mkfs runs again,
// someone writes a filesystem onto it. The wipe's owner looks again, right
// before it wipes, and refuses: nothing is wiped or formatted.
func TestRemadeFormatLooksAgainBeforeWiping(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	v := f.create("pvc", 0, nil)
	if err := f.inv.SetFormat(v.VolumeId, state.FormatStarted); err != nil {
		t.Fatal(err)
	}
	probes := 0
	f.m.SetBefore(func(op, arg string) {
		if op == mounter.OpProbe {
			if probes++; probes == 2 {
				f.m.SetSignatures("/dev/fake0", disk.Probe{FSType: "xfs", UUID: "planted", Signatures: []string{"xfs"}})
			}
		}
	})
	wantCode(t, f.stage(v.VolumeId), codes.FailedPrecondition, "planted")
	for _, c := range f.m.Calls() {
		if strings.HasPrefix(c, "wipe") || strings.HasPrefix(c, "format") || strings.HasPrefix(c, "mount") {
			t.Fatalf("call %q on a disk someone wrote to after the first look", c)
		}
	}
}
