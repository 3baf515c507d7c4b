package inventory

import (
	"context"
	"fmt"
	"sort"

	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// CheckLost looks at the disk of every volume the driver formatted that is
// not in use (not mounted, not held): a disk that is still the volume's
// (same identity) but now carries no signature at all has lost the
// volume's data, as after a redeployed instance or a re-initialised disk.
// Such a volume is marked lost and abnormal; it is never formatted again
// (PrepareFilesystem refuses it), and nothing on the disk is touched. It
// returns how many volumes it found lost.
func (inv *Inventory) CheckLost(ctx context.Context) (int, error) {
	inv.mu.Lock()
	if !inv.ready {
		inv.mu.Unlock()
		return 0, ErrNotReady
	}
	type candidate struct{ volume, disk, path string }
	var cands []candidate
	for id, d := range inv.rec.Disks {
		dev, present := inv.devices[id]
		if d.Status != state.Allocated || d.Volume == nil || d.Volume.Format != state.FormatDone || d.Volume.Lost != "" || !present {
			continue
		}
		cands = append(cands, candidate{d.Volume.ID, id, dev.Path})
	}
	inv.mu.Unlock()
	sort.Slice(cands, func(i, j int) bool { return cands[i].volume < cands[j].volume })
	lost := 0
	for _, c := range cands {
		gone, err := inv.blankWhereFilesystem(ctx, c.disk, c.path)
		if err != nil || !gone {
			continue // in use, not this disk, or unreadable: nothing to tell
		}
		why := fmt.Sprintf("the disk %s (%s) reads blank where the volume's filesystem was: its data is gone (a redeployed instance or a re-initialised disk)", c.disk, c.path)
		if err := inv.markLost(c.volume, why); err != nil {
			return lost, err
		}
		klog.InfoS("Volume lost: its disk reads blank; it is never formatted again", "volumeID", c.volume, "disk", c.disk, "device", c.path)
		lost++
	}
	return lost, nil
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
