package recovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	v1alpha1 "github.com/ecs-localdisk/ecs-localdisk-csi/pkg/apis/v1alpha1"
)

// provisionerFinalizer is csi-provisioner's finalizer on the PVs it
// provisioned: it calls DeleteVolume before letting a PV go. On a lost
// node nobody can, so the controller removes it from the PVs it deletes.
const provisionerFinalizer = "external-provisioner.volume.kubernetes.io/finalizer"

var getOpts = metav1.GetOptions{}

// guarded deletes only the object version that was read: a claim or a pod
// recreated or changed in between is never deleted.
func guarded(uid types.UID, rv string) metav1.DeleteOptions {
	return metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}}
}

// deleteLostClaim deletes the claim of a lost volume, if it is still the
// PV's (same UID) and was not deleted yet, noting first which pods use it:
// those, and only those, are the lost claim's (a pod made after the delete
// uses the claim made after it). It returns the claim while it is going
// away, nil once it is gone or was recreated.
func (c *Controller) deleteLostClaim(ctx context.Context, pv *corev1.PersistentVolume, message string) (*corev1.PersistentVolumeClaim, error) {
	r := pv.Spec.ClaimRef
	if r == nil {
		return nil, nil
	}
	pvcs := c.cfg.Core.CoreV1().PersistentVolumeClaims(r.Namespace)
	pvc, err := pvcs.Get(ctx, r.Name, getOpts)
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, err
	case pvc.UID != r.UID:
		return nil, nil // recreated already: the new claim is not this volume's
	case pvc.DeletionTimestamp != nil:
		return pvc, nil
	}
	pods, err := c.cfg.Core.CoreV1().Pods(r.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	users := map[types.UID]bool{}
	for i := range pods.Items {
		if usesClaim(&pods.Items[i], r.Name) {
			users[pods.Items[i].UID] = true
		}
	}
	c.mu.Lock()
	c.claimUsers[pvc.UID] = users
	c.mu.Unlock()
	if err := pvcs.Delete(ctx, pvc.Name, guarded(pvc.UID, pvc.ResourceVersion)); err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("deleting claim %s/%s: %w", pvc.Namespace, pvc.Name, err)
	}
	c.tellOnce(pvc, corev1.EventTypeWarning, ReasonClaimDeleted, "%s", message)
	pvc, err = pvcs.Get(ctx, r.Name, getOpts)
	if apierrors.IsNotFound(err) || (err == nil && pvc.UID != r.UID) {
		return nil, nil
	}
	return pvc, err
}

// claimSkew is how much older than the claim's deletion a pod must be to
// count as the lost claim's when the controller did not see the delete (it
// restarted): the two times come from API servers' clocks.
const claimSkew = 2 * time.Second

// lostClaimPods lists the pods that use the going-away claim and were
// there when it was deleted (see deleteLostClaim).
func (c *Controller) lostClaimPods(ctx context.Context, pvc *corev1.PersistentVolumeClaim) ([]*corev1.Pod, error) {
	list, err := c.cfg.Core.CoreV1().Pods(pvc.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	users, seen := c.claimUsers[pvc.UID]
	c.mu.Unlock()
	var out []*corev1.Pod
	for i := range list.Items {
		p := &list.Items[i]
		if !usesClaim(p, pvc.Name) || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		if seen && !users[p.UID] {
			continue
		}
		if !seen && !p.CreationTimestamp.Time.Before(pvc.DeletionTimestamp.Time.Add(-claimSkew)) {
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// forgetClaim drops what was noted about a claim that is gone.
func (c *Controller) forgetClaim(pv *corev1.PersistentVolume) {
	if r := pv.Spec.ClaimRef; r != nil {
		c.mu.Lock()
		delete(c.claimUsers, r.UID)
		c.mu.Unlock()
	}
}

// recreate deletes the PV's claim (if it is still the PV's), the pods of
// that claim that cannot run, and the PV itself when its reclaim policy is
// Delete. kept says the PV stays (Retain, or its claim is still going away).
func (c *Controller) recreate(ctx context.Context, pv *corev1.PersistentVolume, node string) (kept bool, err error) {
	pvc, err := c.deleteLostClaim(ctx, pv, fmt.Sprintf("Deleted: its volume %s on node %s is lost, and its class sets %s: %s. "+
		"Its owner (a StatefulSet) recreates it on a node with a free disk.", pv.Name, node, v1alpha1.ParamOnDiskLoss, v1alpha1.OnDiskLossRecreate))
	if err != nil {
		return true, err
	}
	if pvc != nil {
		// The claim waits for the pods that use it; the PV is released once
		// it is gone, and the next pass deletes it.
		return true, c.deletePods(ctx, pv, pvc, node)
	}
	c.forgetClaim(pv)
	if pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
		c.tellOnce(pv, corev1.EventTypeNormal, ReasonVolumeKept, "Kept: its reclaim policy is %s. Its disk on node %s is lost; delete the PV when it is no longer needed.",
			pv.Spec.PersistentVolumeReclaimPolicy, node)
		return true, nil
	}
	return false, c.deletePV(ctx, pv, node)
}

// deletePods deletes the lost claim's pods that cannot run: Pending and not
// placed, or placed on the lost node (its kubelet is gone, so they are
// deleted at once).
func (c *Controller) deletePods(ctx context.Context, pv *corev1.PersistentVolume, pvc *corev1.PersistentVolumeClaim, node string) error {
	pods, err := c.lostClaimPods(ctx, pvc)
	if err != nil {
		return err
	}
	for _, p := range pods {
		stuck := (p.Spec.NodeName == "" && p.Status.Phase == corev1.PodPending && p.DeletionTimestamp == nil) || p.Spec.NodeName == node
		if !stuck {
			continue
		}
		opts := guarded(p.UID, p.ResourceVersion)
		if p.Spec.NodeName == node {
			// No kubelet will confirm the pod's end: delete it now.
			zero := int64(0)
			opts.GracePeriodSeconds = &zero
		}
		if err := c.cfg.Core.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, opts); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		c.tellOnce(p, corev1.EventTypeWarning, ReasonPodDeleted, "Deleted: it uses claim %s, whose volume %s on node %s is lost. Its owner recreates it, "+
			"and the scheduler places it on a node with a free disk.", pvc.Name, pv.Name, node)
	}
	return nil
}

// deletePV deletes the PV and takes csi-provisioner's finalizer off it:
// the provisioner of a lost node is gone, and the disk with it.
func (c *Controller) deletePV(ctx context.Context, pv *corev1.PersistentVolume, node string) error {
	pvs := c.cfg.Core.CoreV1().PersistentVolumes()
	live, err := pvs.Get(ctx, pv.Name, getOpts)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if live.UID != pv.UID {
		return nil
	}
	if live.DeletionTimestamp == nil {
		if err := pvs.Delete(ctx, live.Name, guarded(live.UID, live.ResourceVersion)); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting PV %s: %w", live.Name, err)
		}
		c.tellOnce(live, corev1.EventTypeWarning, ReasonVolumeDeleted, "Deleted: its local disk on node %s is lost.", node)
		if live, err = pvs.Get(ctx, pv.Name, getOpts); apierrors.IsNotFound(err) {
			return nil
		} else if err != nil {
			return err
		}
	}
	i := slices.Index(live.Finalizers, provisionerFinalizer)
	if i < 0 {
		return nil
	}
	patch, _ := json.Marshal([]map[string]any{
		{"op": "test", "path": "/metadata/uid", "value": live.UID},
		{"op": "test", "path": fmt.Sprintf("/metadata/finalizers/%d", i), "value": provisionerFinalizer},
		{"op": "remove", "path": fmt.Sprintf("/metadata/finalizers/%d", i)},
	})
	if _, err := pvs.Patch(ctx, live.Name, types.JSONPatchType, patch, metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("removing %s from PV %s: %w", provisionerFinalizer, live.Name, err)
	}
	klog.InfoS("Removed the provisioner's finalizer of a lost volume", "pv", live.Name, "node", node)
	return nil
}

// nodeOfCapacity is the node whose capacity a CSIStorageCapacity of the
// driver's topology reports, "" for any other.
func (c *Controller) nodeOfCapacity(o *storagev1.CSIStorageCapacity) string {
	if o.NodeTopology == nil || len(o.NodeTopology.MatchExpressions) > 0 || len(o.NodeTopology.MatchLabels) != 1 {
		return ""
	}
	return o.NodeTopology.MatchLabels[c.topologyKey()]
}

// removeCapacities deletes the CSIStorageCapacity objects of a node that is
// gone: they are owned by the DaemonSet, so nothing else removes them.
func (c *Controller) removeCapacities(ctx context.Context, node string) error {
	all, err := c.capacities.List(labels.Everything())
	if err != nil {
		return err
	}
	var errs []error
	caps := c.cfg.Core.StorageV1().CSIStorageCapacities(c.cfg.Namespace)
	for _, o := range all {
		if c.nodeOfCapacity(o) != node {
			continue
		}
		if err := caps.Delete(ctx, o.Name, guarded(o.UID, o.ResourceVersion)); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
			continue
		}
		klog.InfoS("Deleted the capacity of a lost node", "csiStorageCapacity", klog.KObj(o), "node", node)
	}
	return errors.Join(errs...)
}

// removeNodeObjects deletes the lost node's CSIStorageCapacity objects (in
// the driver's namespace, for its topology) and its LocalDisks. A Node of
// that name found again right before (its name reused by a new instance)
// keeps them; of a Node that still exists (its instance released), only
// the LocalDisks of that instance go.
func (c *Controller) removeNodeObjects(ctx context.Context, cd candidate) error {
	node := cd.node
	gone := c.nodeGone(ctx, node)
	if !gone && !cd.exists {
		return nil // registered again meanwhile
	}
	var errs []error
	if gone {
		if err := c.removeCapacities(ctx, node); err != nil {
			errs = append(errs, err)
		}
	}
	disks := c.cfg.Dynamic.Resource(v1alpha1.GroupVersionResource)
	ds, err := disks.List(ctx, metav1.ListOptions{FieldSelector: "spec.node=" + node})
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, d := range ds.Items {
		if n, _, _ := unstructured.NestedString(d.Object, "spec", "node"); n != node {
			continue
		}
		if inst, _, _ := unstructured.NestedString(d.Object, "status", "instanceID"); !gone && (cd.instance == "" || inst != cd.instance) {
			continue // not the released instance's disk
		}
		if err := disks.Delete(ctx, d.GetName(), guarded(d.GetUID(), d.GetResourceVersion())); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
			continue
		}
		klog.InfoS("Deleted the LocalDisk of a lost node", "localDisk", d.GetName(), "node", node)
	}
	return errors.Join(errs...)
}
