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

// recreate deletes the PV's claim (if it is still the PV's), the Pending
// pods that use it, and the PV itself when its reclaim policy is Delete.
// kept says the PV stays (Retain, or its claim is still going away).
func (c *Controller) recreate(ctx context.Context, pv *corev1.PersistentVolume, node string) (kept bool, err error) {
	claimGone := true
	if r := pv.Spec.ClaimRef; r != nil {
		pvcs := c.cfg.Core.CoreV1().PersistentVolumeClaims(r.Namespace)
		pvc, err := pvcs.Get(ctx, r.Name, getOpts)
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return true, err
		case pvc.UID != r.UID:
			// Recreated already: the new claim is not this volume's.
		default:
			claimGone = false
			if pvc.DeletionTimestamp == nil {
				if err := pvcs.Delete(ctx, pvc.Name, guarded(pvc.UID, pvc.ResourceVersion)); err != nil && !apierrors.IsNotFound(err) {
					return true, fmt.Errorf("deleting claim %s/%s: %w", pvc.Namespace, pvc.Name, err)
				}
				c.tellOnce(pvc, corev1.EventTypeWarning, ReasonClaimDeleted, "Deleted: its volume %s on node %s is lost, and its class sets %s: %s. "+
					"Its owner (a StatefulSet) recreates it on a node with a free disk.", pv.Name, node, v1alpha1.ParamOnDiskLoss, v1alpha1.OnDiskLossRecreate)
				if pvc, err = pvcs.Get(ctx, r.Name, getOpts); apierrors.IsNotFound(err) {
					break
				} else if err != nil {
					return true, err
				}
			}
			if pvc.UID == r.UID && pvc.DeletionTimestamp != nil {
				// The claim waits for the pods that use it.
				if err := c.deletePods(ctx, pv, node, pvc.DeletionTimestamp.Time); err != nil {
					return true, err
				}
			}
		}
	}
	if !claimGone {
		// The PV is released once the claim is gone; the next pass deletes it.
		return true, nil
	}
	if pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
		c.tellOnce(pv, corev1.EventTypeNormal, ReasonVolumeKept, "Kept: its reclaim policy is %s. Its disk on node %s is lost; delete the PV when it is no longer needed.",
			pv.Spec.PersistentVolumeReclaimPolicy, node)
		return true, nil
	}
	return false, c.deletePV(ctx, pv, node)
}

// deletePods deletes the pods that use the PV's claim, were created before
// the claim's deletion, and cannot run: Pending and not placed, or placed
// on the lost node (its kubelet is gone, so they are deleted at once). A
// pod created since (its owner's new one) is left alone: it will use the
// new claim.
func (c *Controller) deletePods(ctx context.Context, pv *corev1.PersistentVolume, node string, claimDeleted time.Time) error {
	r := pv.Spec.ClaimRef
	pods := c.cfg.Core.CoreV1().Pods(r.Namespace)
	list, err := pods.List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range list.Items {
		p := &list.Items[i]
		uses := usesClaim(p, r.Name)
		stuck := (p.Spec.NodeName == "" && p.Status.Phase == corev1.PodPending) || p.Spec.NodeName == node
		if !uses || !stuck || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed || !p.CreationTimestamp.Time.Before(claimDeleted) {
			continue
		}
		if p.Spec.NodeName == "" && p.DeletionTimestamp != nil {
			continue
		}
		opts := guarded(p.UID, p.ResourceVersion)
		if p.Spec.NodeName == node {
			// No kubelet will confirm the pod's end: delete it now.
			zero := int64(0)
			opts.GracePeriodSeconds = &zero
		}
		if err := pods.Delete(ctx, p.Name, opts); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		c.tellOnce(p, corev1.EventTypeWarning, ReasonPodDeleted, "Deleted: it uses claim %s, whose volume %s on node %s is lost. Its owner recreates it, "+
			"and the scheduler places it on a node with a free disk.", r.Name, pv.Name, node)
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
// the driver's namespace, for its topology) and its LocalDisks.
func (c *Controller) removeNodeObjects(ctx context.Context, node string) error {
	var errs []error
	if err := c.removeCapacities(ctx, node); err != nil {
		errs = append(errs, err)
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
		if err := disks.Delete(ctx, d.GetName(), guarded(d.GetUID(), d.GetResourceVersion())); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
			continue
		}
		klog.InfoS("Deleted the LocalDisk of a lost node", "localDisk", d.GetName(), "node", node)
	}
	return errors.Join(errs...)
}
