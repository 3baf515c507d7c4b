package inventory

import (
	"context"
	"fmt"
	"sort"

	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// lostCandidate says whether disk d holds a volume that could have lost its
// data: one whose filesystem the driver made, not yet known lost, on a
// device present now. inv.mu must be held.
func (inv *Inventory) lostCandidateLocked(d *state.Disk) bool {
	_, present := inv.devices[d.ID]
	return d.Status == state.Allocated && d.Volume != nil && d.Volume.Format == state.FormatDone && d.Volume.Lost == "" && present
}

// LostCandidates lists, sorted, the volumes CheckLost looks at.
func (inv *Inventory) LostCandidates() ([]string, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if !inv.ready {
		return nil, ErrNotReady
	}
	var out []string
	for _, d := range inv.rec.Disks {
		if inv.lostCandidateLocked(d) {
			out = append(out, d.Volume.ID)
		}
	}
	sort.Strings(out)
	return out, nil
}

// CheckLost looks at the disk of a volume the driver formatted, when it is
// not in use (not mounted, not held): a disk that is still the volume's
// (same identity) but now carries no signature at all has lost the
// volume's data, as after a redeployed instance or a re-initialised disk.
// Such a volume is marked lost and abnormal; it is never formatted again
// (PrepareFilesystem refuses it), and nothing on the disk is touched. A
// disk in use, of another identity, or unreadable tells nothing. The
// caller holds the volume's operation lock, so that no stage races the
// check. It reports whether it found the volume lost.
func (inv *Inventory) CheckLost(ctx context.Context, volumeID string) (bool, error) {
	inv.mu.Lock()
	if !inv.ready {
		inv.mu.Unlock()
		return false, ErrNotReady
	}
	v, err := inv.lookupLocked(volumeID)
	if err != nil || !inv.lostCandidateLocked(inv.rec.Disks[v.Disk.ID]) {
		inv.mu.Unlock()
		return false, nil
	}
	path := inv.devices[v.Disk.ID].Path
	inv.mu.Unlock()
	if gone, err := inv.blankWhereFilesystem(ctx, v.Disk.ID, path); err != nil || !gone {
		return false, nil
	}
	why := fmt.Sprintf("the disk %s (%s) reads blank where the volume's filesystem was: its data is gone (a redeployed instance or a re-initialised disk)", v.Disk.ID, path)
	if err := inv.markLost(volumeID, why); err != nil {
		return false, err
	}
	klog.InfoS("Volume lost: its disk reads blank; it is never formatted again", "volumeID", volumeID, "disk", v.Disk.ID, "device", path)
	return true, nil
}

// blankWhereFilesystem says whether disk id at path, unused, carries no
// signature at all. It holds the disk's check lock.
func (inv *Inventory) blankWhereFilesystem(ctx context.Context, id, path string) (bool, error) {
	unlock := inv.lockCheck(id)
	defer unlock()
	p, err := inv.inspect(ctx, id, path)
	if err != nil {
		return false, err
	}
	return len(p.Signatures) == 0, nil
}

// markLost records the volume as lost, and so abnormal, with why.
func (inv *Inventory) markLost(volumeID, why string) error {
	return inv.updateVolume(volumeID, func(d *state.Disk) { d.Volume.Lost, d.Volume.Abnormal = why, why })
}
