package recovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	v1alpha1 "github.com/ecs-localdisk/ecs-localdisk-csi/pkg/apis/v1alpha1"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/cloud"
)

// Event reasons of damaged disks and lost volumes.
const (
	ReasonDiskDamaged   = "LocalDiskDamaged"
	ReasonDiskRepaired  = "LocalDiskNoLongerDamaged"
	ReasonEventAccepted = "DiskEventAccepted"
	ReasonVolumeLost    = "VolumeLost"
	ReasonPodEvicted    = "PodEvicted"
)

// DamageEventTypes are the instance system events that name a damaged
// local disk; they wait in Inquiring for the owner's consent.
var DamageEventTypes = []string{
	"SystemMaintenance.IsolateErrorDisk", "SystemMaintenance.RebootAndIsolateErrorDisk",
	"SystemMaintenance.ReInitErrorDisk", "SystemMaintenance.RebootAndReInitErrorDisk",
}

// diskObject is what the controller reads of a LocalDisk.
type diskObject struct {
	u                                    *unstructured.Unstructured
	name, node, damaged, reason          string
	cloudID, instance, phase, volumeLost string
	// hasVolume: the status names a volume (allocated, or its cleanup not
	// done); volumeID and pv name it.
	hasVolume                    bool
	volumeID, pv, claimNS, claim string
}

func readDisk(u *unstructured.Unstructured) diskObject {
	s := func(path ...string) string { v, _, _ := unstructured.NestedString(u.Object, path...); return v }
	_, hasVolume, _ := unstructured.NestedMap(u.Object, "status", "volume")
	return diskObject{u: u, name: u.GetName(), node: s("spec", "node"), damaged: s("spec", "damaged"), reason: s("status", "reason"),
		cloudID: s("status", "cloudDiskID"), instance: s("status", "instanceID"), phase: s("status", "phase"),
		hasVolume: hasVolume, volumeID: s("status", "volume", "id"),
		volumeLost: s("status", "volume", "lost"), pv: s("status", "volume", "persistentVolume"),
		claimNS: s("status", "volume", "claimNamespace"), claim: s("status", "volume", "claimName")}
}

// localDisks lists every LocalDisk from the cache.
func (c *Controller) localDisks() []diskObject {
	objs, err := c.disks.List(labels.Everything())
	if err != nil {
		return nil
	}
	out := make([]diskObject, 0, len(objs))
	for _, o := range objs {
		if u, ok := o.(*unstructured.Unstructured); ok {
			out = append(out, readDisk(u))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// damageOf is how a damaged disk is recorded in spec.damaged: the event,
// its type and state, and ECS's reason.
func damageOf(e cloud.SystemEvent) string {
	s := fmt.Sprintf("ECS event %s: %s (%s)", e.ID, e.Type, e.Status)
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	if len(s) > 1024 {
		s = s[:1024]
	}
	return s
}

// syncDamage asks ECS which disks of the cluster's instances are damaged
// (the Inquiring and Executing damaged-disk events, and Disk:ErrorDetected)
// and marks their LocalDisks: spec.damaged, which the node follows. A mark
// whose event is over is lifted. For the classes that opt in, the claim
// of a volume on a damaged disk is recreated elsewhere; with
// AcceptDiskEvents, the event of a damaged disk that holds no volume is
// accepted, so that ECS repairs the disk.
func (c *Controller) syncDamage(ctx context.Context) error {
	if c.cfg.Cloud == nil {
		return nil
	}
	disks := c.localDisks()
	var instances, diskIDs []string
	for _, d := range disks {
		if d.instance != "" && !slices.Contains(instances, d.instance) {
			instances = append(instances, d.instance)
		}
		if d.cloudID != "" {
			diskIDs = append(diskIDs, d.cloudID)
		}
	}
	if len(instances) == 0 && len(diskIDs) == 0 {
		return nil
	}
	var events []cloud.SystemEvent
	if len(instances) > 0 {
		evs, err := c.cfg.Cloud.ActiveEvents(ctx, instances, DamageEventTypes...)
		if err != nil {
			return fmt.Errorf("reading ECS's damaged-disk events: %w", err)
		}
		events = append(events, evs...)
	}
	if len(diskIDs) > 0 {
		evs, err := c.cfg.Cloud.DiskErrors(ctx, diskIDs, c.cfg.Clock.Now())
		if err != nil {
			return fmt.Errorf("reading ECS's disk errors: %w", err)
		}
		events = append(events, evs...)
	}
	byDisk := map[string]cloud.SystemEvent{}
	for _, e := range events {
		if e.DiskID == "" {
			klog.InfoS("ECS reports a damaged local disk without its disk ID; it is not matched to a LocalDisk", "event", e.ID, "type", e.Type,
				"instance", e.InstanceID, "device", e.Device)
			continue
		}
		// An Inquiring event is the one to accept: it wins over another
		// event of the same disk.
		if old, ok := byDisk[e.DiskID]; !ok || (e.Status == "Inquiring" && old.Status != "Inquiring") {
			byDisk[e.DiskID] = e
		}
	}
	var errs []error
	for _, d := range disks {
		e, damaged := byDisk[d.cloudID]
		if damaged && d.instance != "" && e.InstanceID != "" && e.InstanceID != d.instance {
			damaged = false // another instance's disk of the same ID cannot be
		}
		want := ""
		if damaged {
			want = damageOf(e)
		}
		if want != d.damaged {
			if err := c.markDamaged(ctx, d, want); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if !damaged {
			continue
		}
		if pv, ok := c.volumeOfDisk(d); ok {
			if err := c.recoverVolume(ctx, pv, fmt.Sprintf("its local disk %s on node %s is damaged (%s)", d.cloudID, d.node, want)); err != nil {
				errs = append(errs, err)
			}
		}
		// Consent only in a pass after the one that marked the disk, so
		// that its node has applied the mark (no new volume on it).
		if c.cfg.AcceptDiskEvents && e.Status == "Inquiring" && e.CanAccept && d.damaged == want {
			errs = append(errs, c.accept(ctx, d.name, e, want))
		}
	}
	return errors.Join(errs...)
}

// markDamaged sets (or, with "", lifts) the disk's spec.damaged, and tells.
func (c *Controller) markDamaged(ctx context.Context, d diskObject, damage string) error {
	var v any
	if damage != "" {
		v = damage
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"uid": d.u.GetUID()}, "spec": map[string]any{"damaged": v}})
	if _, err := c.cfg.Dynamic.Resource(v1alpha1.GroupVersionResource).Patch(ctx, d.name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("marking LocalDisk %s damaged: %w", d.name, err)
	}
	if damage == "" {
		c.event(d.u, corev1.EventTypeNormal, ReasonDiskRepaired, "ECS no longer reports local disk %s of node %s damaged: it serves again once its node finds it usable.", d.cloudID, d.node)
		c.forget(d.u, ReasonDiskDamaged)
		return nil
	}
	c.forget(d.u, ReasonDiskRepaired)
	c.tellOnce(d.u, corev1.EventTypeWarning, ReasonDiskDamaged, "%s. Local disk %s of node %s leaves allocation and capacity.", damage, d.cloudID, d.node)
	if d.pv == "" {
		return nil
	}
	msg := fmt.Sprintf("%s: local disk %s of node %s, which holds volume %s, is damaged; the volume may fail. Move the data off it (a replica "+
		"rebuilds elsewhere once its claim is deleted), or set %s: %s on its class to have that done.", damage, d.cloudID, d.node, d.pv,
		v1alpha1.ParamOnDiskLoss, v1alpha1.OnDiskLossRecreate)
	c.tellVolumeObjects(ctx, d, ReasonDiskDamaged, msg)
	return nil
}

// tellVolumeObjects tells the disk's volume: its PV, its claim and the pods
// that use the claim.
func (c *Controller) tellVolumeObjects(ctx context.Context, d diskObject, reason, msg string) {
	pv, ok := c.volumeOfDisk(d)
	if !ok {
		return
	}
	c.tellOnce(pv, corev1.EventTypeWarning, reason, "%s", msg)
	r := pv.Spec.ClaimRef
	if r == nil {
		return
	}
	pvc, err := c.cfg.Core.CoreV1().PersistentVolumeClaims(r.Namespace).Get(ctx, r.Name, getOpts)
	if err != nil || pvc.UID != r.UID {
		return // gone, or recreated: the pods using that name use the new one
	}
	c.tellOnce(pvc, corev1.EventTypeWarning, reason, "%s", msg)
	pods, err := c.cfg.Core.CoreV1().Pods(r.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	for i := range pods.Items {
		if usesClaim(&pods.Items[i], r.Name) {
			c.tellOnce(&pods.Items[i], corev1.EventTypeWarning, reason, "%s", msg)
		}
	}
}

// syncLost tells about, and for the classes that opt in recreates, the
// volumes whose node found their data gone (a blank disk where the volume's
// filesystem was: a redeployed instance or a re-initialised disk).
func (c *Controller) syncLost(ctx context.Context) error {
	var errs []error
	for _, d := range c.localDisks() {
		if d.volumeLost == "" {
			continue
		}
		pv, ok := c.volumeOfDisk(d)
		if !ok {
			continue
		}
		why := fmt.Sprintf("its data on local disk %s of node %s is gone (%s)", cmpOr(d.cloudID, d.name), d.node, d.volumeLost)
		if !c.wasTold(pv, ReasonVolumeLost) {
			c.tellVolumeObjects(ctx, d, ReasonVolumeLost, fmt.Sprintf("Volume %s is lost: %s. Nothing was formatted; the volume is not staged again. "+
				"Delete the claim to have it recreated, or set %s: %s on its class to have that done.", d.pv, why, v1alpha1.ParamOnDiskLoss, v1alpha1.OnDiskLossRecreate))
		}
		if err := c.recoverVolume(ctx, pv, why); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// volumeOfDisk is the PV of the volume a LocalDisk's status names, when it
// is the driver's, on that disk's node, with that volume ID: a status never
// makes the controller act on another volume.
func (c *Controller) volumeOfDisk(d diskObject) (*corev1.PersistentVolume, bool) {
	if d.pv == "" {
		return nil, false
	}
	pv, err := c.pvs.Get(d.pv)
	if err != nil || pv.Spec.CSI == nil || pv.Spec.CSI.Driver != c.cfg.DriverName || pv.Spec.CSI.VolumeHandle != d.volumeID || c.nodeOfPV(pv) != d.node {
		return nil, false
	}
	return pv, true
}

// recoverVolume recreates the claim of a volume whose disk is damaged or
// whose data is gone, on a node that is alive, when its class opts in:
// the claim is deleted, and the pods that used it then are evicted (a
// PodDisruptionBudget is respected: an eviction it refuses is tried again
// at the next check). The PV goes through csi-provisioner as usual.
func (c *Controller) recoverVolume(ctx context.Context, pv *corev1.PersistentVolume, why string) error {
	if !c.opted(pv) || c.isDone(pv.UID) {
		return nil
	}
	pvc, err := c.deleteLostClaim(ctx, pv, fmt.Sprintf("Deleted: %s, and its class sets %s: %s. Its owner (a StatefulSet) recreates it on a disk that works.",
		why, v1alpha1.ParamOnDiskLoss, v1alpha1.OnDiskLossRecreate))
	if err != nil {
		return err
	}
	if pvc == nil {
		c.forgetClaim(pv)
		c.markDone(pv.UID)
		return nil
	}
	pods, err := c.lostClaimPods(ctx, pvc)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range pods {
		if p.DeletionTimestamp != nil {
			continue
		}
		ev := &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace},
			DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &p.UID}}}
		if err := c.cfg.Core.CoreV1().Pods(p.Namespace).EvictV1(ctx, ev); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("evicting pod %s/%s: %w", p.Namespace, p.Name, err))
			continue
		}
		c.tellOnce(p, corev1.EventTypeWarning, ReasonPodEvicted, "Evicted: it uses claim %s, deleted because %s. Its owner recreates it with a new claim.", pvc.Name, why)
	}
	return errors.Join(errs...)
}

// isDone says whether the volume's recovery is over (its claim gone or
// recreated); markDone records that.
func (c *Controller) isDone(uid types.UID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done[uid]
}

func (c *Controller) markDone(uid types.UID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.done) >= maxTold {
		c.done = map[types.UID]bool{}
	}
	c.done[uid] = true
}

// usesClaim says whether the pod uses the claim: by name, or as the claim
// of a generic ephemeral volume ("<pod>-<volume>").
func usesClaim(p *corev1.Pod, claim string) bool {
	return slices.ContainsFunc(p.Spec.Volumes, func(v corev1.Volume) bool {
		return (v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == claim) ||
			(v.Ephemeral != nil && p.Name+"-"+v.Name == claim)
	})
}

// accept gives the owner's consent to a damaged disk's event, once, when
// no volume uses the disk: read again from the API server, the disk must
// show the mark applied by its node (phase Damaged with the event as
// reason) and no volume, or only the volume of a PV that no longer exists
// (its cleanup may have failed on the damaged disk). ECS then isolates,
// replaces or re-initialises the disk.
func (c *Controller) accept(ctx context.Context, name string, e cloud.SystemEvent, damage string) error {
	c.mu.Lock()
	done := c.accepted[e.ID]
	c.mu.Unlock()
	if done {
		return nil
	}
	u, err := c.cfg.Dynamic.Resource(v1alpha1.GroupVersionResource).Get(ctx, name, getOpts)
	if err != nil {
		return nil
	}
	d := readDisk(u)
	if d.damaged != damage || d.phase != v1alpha1.PhaseDamaged || d.reason != damage || c.volumeUses(ctx, d) {
		return nil
	}
	if err := c.cfg.Cloud.AcceptEvent(ctx, e.ID); err != nil {
		return fmt.Errorf("accepting ECS event %s of disk %s: %w", e.ID, d.cloudID, err)
	}
	c.mu.Lock()
	c.accepted[e.ID] = true
	c.mu.Unlock()
	c.tellOnce(d.u, corev1.EventTypeNormal, ReasonEventAccepted, "Accepted ECS event %s (%s) for local disk %s of node %s, which holds no volume: "+
		"ECS repairs the disk; a replaced or re-initialised disk joins as a free disk once its node finds it blank.", e.ID, e.Type, d.cloudID, d.node)
	return nil
}

// volumeUses says whether a volume still uses the disk: its status names
// one, unless that volume's PV is gone (deleted: only its cleanup is left).
// A volume without a PV name (adopted) always counts.
func (c *Controller) volumeUses(ctx context.Context, d diskObject) bool {
	if !d.hasVolume {
		return d.phase == v1alpha1.PhaseAllocated
	}
	if d.pv == "" {
		return true
	}
	pv, err := c.cfg.Core.CoreV1().PersistentVolumes().Get(ctx, d.pv, getOpts)
	if apierrors.IsNotFound(err) {
		return false
	}
	return err != nil || pv.Spec.CSI == nil || pv.Spec.CSI.VolumeHandle == d.volumeID || d.volumeID == ""
}

// wasTold says whether reason was told about obj already.
func (c *Controller) wasTold(obj metav1.Object, reason string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.told[string(obj.GetUID())+"/"+reason]
}

// event records an event each time (tellOnce records it once).
func (c *Controller) event(obj runtime.Object, kind, reason, format string, a ...any) {
	c.forget(obj, reason)
	c.tellOnce(obj, kind, reason, format, a...)
}

// forget lets the reason be told again for obj.
func (c *Controller) forget(obj runtime.Object, reason string) {
	if u, ok := obj.(interface{ GetUID() types.UID }); ok {
		c.mu.Lock()
		delete(c.told, string(u.GetUID())+"/"+reason)
		c.mu.Unlock()
	}
}
