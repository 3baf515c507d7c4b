package kube

import (
	"cmp"
	"fmt"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/ecs-localdisk/ecs-localdisk-csi/pkg/apis/v1alpha1"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// phases maps the inventory's statuses to LocalDisk phases.
var phases = map[string]string{
	string(state.Free): v1alpha1.PhaseFree, string(state.Allocated): v1alpha1.PhaseAllocated,
	string(state.Cleaning): v1alpha1.PhaseCleaning, string(state.Failed): v1alpha1.PhaseFailed,
	string(state.Excluded): v1alpha1.PhaseExcluded, inventory.StatusMissing: v1alpha1.PhaseMissing,
	inventory.StatusDamaged: v1alpha1.PhaseDamaged,
}

// maxReason bounds the reason copied into an object or an event.
const maxReason = 1024

// statusOf is the LocalDisk status that mirrors v.
func statusOf(v inventory.DiskView) v1alpha1.LocalDiskStatus {
	s := v1alpha1.LocalDiskStatus{
		Phase: phases[v.Shown()], Cordoned: v.Cordoned, Reason: bound(cmp.Or(v.Damaged, v.Reason)), Identity: v.Identity, CloudDiskID: v.CloudID, InstanceID: v.InstanceID,
		Device: v.Device, SizeBytes: v.SizeBytes, Media: v.Media, Category: v.Category, Residual: v.Residual,
		LastTransitionTime: metav1.NewTime(v.UpdatedAt.UTC().Truncate(1e9)),
	}
	if v.SizeBytes > 0 {
		s.Capacity = resource.NewQuantity(v.SizeBytes, resource.BinarySI).String()
	}
	if vol := v.Volume; vol != nil {
		s.Volume = &v1alpha1.VolumeRef{ID: vol.ID, PersistentVolume: vol.PV, ClaimNamespace: vol.ClaimNamespace, ClaimName: vol.ClaimName,
			Abnormal: bound(vol.Abnormal), Lost: bound(vol.Lost)}
		if vol.ClaimName != "" {
			s.Claim = vol.ClaimNamespace + "/" + vol.ClaimName
		}
	}
	if v.Status == string(state.Cleaning) || v.Status == string(state.Failed) {
		c := &v1alpha1.Cleanup{Policy: v.CleanupPolicy}
		if done, total, ok := v.CleanupBytes(); ok && total > 0 {
			c.DoneBytes, c.TotalBytes = done, total
			c.Progress = fmt.Sprintf("%d%%", done*100/total)
		}
		s.Cleanup = c
	}
	return s
}

func bound(s string) string {
	if len(s) > maxReason {
		return s[:maxReason] + "..."
	}
	return s
}
