package inventory

import (
	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// SetFormat records, before it is reported, how far the driver got making
// the volume's filesystem: a crash during mkfs leaves FormatStarted behind,
// which tells a partial filesystem of the driver's own from data.
func (inv *Inventory) SetFormat(volumeID string, f state.Format) error {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if !inv.ready {
		return ErrNotReady
	}
	v, err := inv.lookupLocked(volumeID)
	if err != nil {
		return err
	}
	next := inv.rec.Clone()
	next.Disks[v.Disk.ID].Volume.Format = f
	if err := inv.commitLocked(next); err != nil {
		return err
	}
	klog.V(2).InfoS("Format progress recorded", "volumeID", volumeID, "disk", v.Disk.ID, "format", f)
	return nil
}
