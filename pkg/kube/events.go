package kube

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	v1alpha1 "github.com/ecs-localdisk/ecs-localdisk-csi/pkg/apis/v1alpha1"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// Event reasons.
const (
	ReasonCleanupFailed  = "DiskCleanupFailed"
	ReasonDiskExcluded   = "DiskExcluded"
	ReasonDiskMissing    = "DiskMissing"
	ReasonVolumeAbnormal = "VolumeAbnormal"
	ReasonVolumeRefused  = "VolumeRefused"
)

// VolumeAbnormal tells the PV and the claim of a volume whose filesystem
// went wrong (turned read-only); it returns at once, like VolumeRefused.
func (m *Mirror) VolumeAbnormal(v inventory.Volume, reason string) {
	m.tellVolumeLater(v, ReasonVolumeAbnormal, fmt.Sprintf("Volume %s on local disk %s of node %s is abnormal: %s. Its pods may fail to write; "+
		"move the data off the disk, then delete the claim.", v.ID, v.Disk.ID, m.cfg.Node, reason))
}

// VolumeRefused tells the PV and the claim of a volume the node refuses to
// stage or publish for safety (driver.RefusalNotifier). It returns at once:
// the API calls run in the background, bounded in time.
func (m *Mirror) VolumeRefused(v inventory.Volume, reason string) {
	m.tellVolumeLater(v, ReasonVolumeRefused, fmt.Sprintf("Node %s refuses to use local disk %s for volume %s, for safety: %s. Nothing on the disk "+
		"was changed; kubectl get localdisk %s shows the disk.", m.cfg.Node, v.Disk.ID, v.ID, reason, v1alpha1.ObjectName(m.cfg.Node, v.Disk.ID)))
}

// tellVolumeLater emits the event on the volume's PV and claim in the
// background, bounded in time: the caller is a CSI call.
func (m *Mirror) tellVolumeLater(v inventory.Volume, reason, msg string) {
	if m.cfg.Recorder == nil || (v.PV == "" && v.ClaimName == "") {
		return
	}
	ref := &v1alpha1.VolumeRef{ID: v.ID, PersistentVolume: v.PV, ClaimNamespace: v.ClaimNamespace, ClaimName: v.ClaimName}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		m.tellVolume(ctx, ref, reason, msg)
	}()
}

// tell emits the events of a disk's change from before to after: on the
// Node for a failed cleanup, an exclusion and a missing free disk; on the
// PV and the claim for a volume whose disk is missing or whose volume
// turned abnormal. Each (object, reason) is told at most once per window,
// so a flapping disk makes no storm (the recorder's own spam filter is
// the second line).
func (m *Mirror) tell(ctx context.Context, v inventory.DiskView, before, after v1alpha1.LocalDiskStatus) {
	if m.cfg.Recorder == nil {
		return
	}
	name := v1alpha1.ObjectName(m.cfg.Node, v.ID)
	entered := func(phase string) bool { return after.Phase == phase && before.Phase != phase }
	switch {
	case entered(v1alpha1.PhaseFailed):
		m.emitOnNode(ctx, ReasonCleanupFailed, fmt.Sprintf("Cleanup (%s) of local disk %s (%s) failed: %s. It is retried every minute and the disk "+
			"stays out of capacity until it succeeds; check the device (dmesg, SMART). kubectl get localdisk %s shows the latest error.",
			after.Cleanup.Policy, v.ID, v.Device, after.Reason, name))
	case entered(v1alpha1.PhaseExcluded):
		m.emitOnNode(ctx, ReasonDiskExcluded, fmt.Sprintf("Local disk %s (%s) is excluded: %s. The driver does not allocate, format or wipe it. "+
			"If what it holds is not needed, erase its signatures (wipefs -a) and it becomes free.", v.ID, v.Device, after.Reason))
	case entered(v1alpha1.PhaseMissing) && (after.Volume == nil || v.Status != string(state.Allocated)):
		// No volume, or a deleted one being cleaned: the node's concern.
		m.emitOnNode(ctx, ReasonDiskMissing, fmt.Sprintf("Local disk %s (%s, last seen at %s) is not found; it is out of capacity until it is back.",
			v.ID, v.Identity, v.Device))
	case entered(v1alpha1.PhaseMissing):
		m.tellVolume(ctx, after.Volume, ReasonDiskMissing, fmt.Sprintf("The local disk %s (%s, last seen at %s on node %s) of this volume is not found: "+
			"pods using it cannot run. If the disk is gone for good, the data is lost: delete the claim to have it provisioned again.",
			v.ID, v.Identity, v.Device, m.cfg.Node))
	}
	if vol := after.Volume; vol != nil && vol.Abnormal != "" && (before.Volume == nil || before.Volume.Abnormal == "") {
		m.tellVolume(ctx, vol, ReasonVolumeAbnormal, fmt.Sprintf("Volume %s on local disk %s of node %s is abnormal: %s.", vol.ID, v.ID, m.cfg.Node, vol.Abnormal))
	}
}

// tellVolume emits one event on the volume's PV and one on its claim.
func (m *Mirror) tellVolume(ctx context.Context, vol *v1alpha1.VolumeRef, reason, msg string) {
	if vol.PersistentVolume != "" {
		m.emit(m.objectRef(ctx, "PersistentVolume", "", vol.PersistentVolume), reason, msg)
	}
	if vol.ClaimName != "" {
		m.emit(m.objectRef(ctx, "PersistentVolumeClaim", vol.ClaimNamespace, vol.ClaimName), reason, msg)
	}
}

// emitOnNode emits an event on this node's Node; without its UID when the
// Node cannot be read (kubectl describe then does not show it, kubectl get
// events does).
func (m *Mirror) emitOnNode(ctx context.Context, reason, msg string) {
	ref, err := m.nodeOf(ctx)
	if err != nil {
		klog.ErrorS(err, "Event on the node without its UID", "reason", reason)
		ref = &corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: m.cfg.Node}
	}
	m.emit(ref, reason, msg)
}

func (m *Mirror) emit(ref *corev1.ObjectReference, reason, msg string) {
	if !m.events.allow(ref.Kind + "/" + ref.Namespace + "/" + ref.Name + "/" + reason) {
		return
	}
	m.cfg.Recorder.Event(ref, corev1.EventTypeWarning, reason, bound(msg))
}

// eventLimiter lets each key through at most once per window.
type eventLimiter struct {
	mu     sync.Mutex
	clock  clock.Clock
	window time.Duration
	last   map[string]time.Time
}

func newEventLimiter(c clock.Clock, window time.Duration) *eventLimiter {
	return &eventLimiter{clock: c, window: window, last: map[string]time.Time{}}
}

func (l *eventLimiter) allow(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	if t, ok := l.last[key]; ok && now.Sub(t) < l.window {
		return false
	}
	for k, t := range l.last { // keep the map small
		if now.Sub(t) >= l.window {
			delete(l.last, k)
		}
	}
	l.last[key] = now
	return true
}
