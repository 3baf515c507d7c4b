package inventory

import (
	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// SetFormat records, before it is reported, how far the driver got making
// the volume's filesystem: a crash during mkfs leaves FormatStarted behind,
// which tells a partial filesystem of the driver's own from data.
func (inv *Inventory) SetFormat(volumeID string, f state.Format) error {
	if err := inv.updateVolume(volumeID, func(d *state.Disk) { d.Volume.Format = f }); err != nil {
		return err
	}
	klog.V(2).InfoS("Format progress recorded", "volumeID", volumeID, "format", f)
	return nil
}
