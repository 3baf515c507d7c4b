package recovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	v1alpha1 "github.com/ecs-localdisk/ecs-localdisk-csi/pkg/apis/v1alpha1"
)

// Event reasons of node loss.
const (
	ReasonDiskLost          = "LocalDiskLost"
	ReasonInstanceRunning   = "NodeDeletedInstanceAlive"
	ReasonLossUnconfirmed   = "LocalDiskLossUnconfirmed"
	ReasonInstanceConflict  = "InstanceConflict"
	ReasonClaimDeleted      = "ClaimDeleted"
	ReasonPodDeleted        = "PodDeleted"
	ReasonVolumeDeleted     = "VolumeDeleted"
	ReasonVolumeKept        = "VolumeKept"
	volumeContextInstanceID = "ecsInstanceId"
)

// maxWitnesses bounds the Ready nodes' instances asked along with the
// suspects, as proof that ECS answers for the right account and region.
const maxWitnesses = 3

// topologyKey is the driver's one topology key.
func (c *Controller) topologyKey() string { return "topology." + c.cfg.DriverName + "/node" }

// nodeOfPV is the node a PV of the driver is on, from its node affinity.
func (c *Controller) nodeOfPV(pv *corev1.PersistentVolume) string {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return ""
	}
	for _, t := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, e := range t.MatchExpressions {
			if e.Key == c.topologyKey() && e.Operator == corev1.NodeSelectorOpIn && len(e.Values) == 1 {
				return e.Values[0]
			}
		}
	}
	return ""
}

// volumesByNode groups the driver's PVs by their node.
func (c *Controller) volumesByNode() (map[string][]*corev1.PersistentVolume, error) {
	all, err := c.pvs.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	out := map[string][]*corev1.PersistentVolume{}
	for _, pv := range all {
		if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != c.cfg.DriverName {
			continue
		}
		if n := c.nodeOfPV(pv); n != "" {
			out[n] = append(out[n], pv)
		}
	}
	return out, nil
}

// providerIDForm is the providerID Alibaba Cloud's cloud controller
// manager gives a Node: "<region>.<instance>", with or without
// "alicloud://".
var providerIDForm = regexp.MustCompile(`^(?:alicloud://)?([a-z0-9-]+)\.(i-[a-z0-9]+)$`)

// InstanceOfProviderID is the ECS region and instance a Node's
// spec.providerID names, or "", "" for any other form (another cloud, an
// IDC node): only an ECS instance can be confirmed released by ECS.
func InstanceOfProviderID(id string) (region, instance string) {
	m := providerIDForm.FindStringSubmatch(id)
	if m == nil {
		return "", ""
	}
	return m[1], m[2]
}

// instanceAnnotation records a volume's ECS instance on its PV when the PV
// was created without one (before the driver wrote ecsInstanceId): known
// from the node's LocalDisks or providerID while they exist, it is still
// known after a restart of the controller, once they are gone.
const instanceAnnotation = "localdisk.csi.alibabacloud.com/ecs-instance-id"

// pvInstance is the ECS instance a PV names: its volume context, else the
// annotation the controller wrote.
func pvInstance(pv *corev1.PersistentVolume) string {
	if id := pv.Spec.CSI.VolumeAttributes[volumeContextInstanceID]; id != "" {
		return id
	}
	return pv.Annotations[instanceAnnotation]
}

func ready(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// diskInstances is, by node, the instances its LocalDisks name.
func (c *Controller) diskInstances() map[string]map[string]bool {
	out := map[string]map[string]bool{}
	objs, err := c.disks.List(labels.Everything())
	if err != nil {
		return out
	}
	for _, o := range objs {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		node, _, _ := unstructured.NestedString(u.Object, "spec", "node")
		id, _, _ := unstructured.NestedString(u.Object, "status", "instanceID")
		if node != "" && id != "" {
			if out[node] == nil {
				out[node] = map[string]bool{}
			}
			out[node][id] = true
		}
	}
	return out
}

// instanceOf is the node's ECS instance: what its volumes, its LocalDisks
// and its providerID (now or as last seen) say. They must agree.
func (c *Controller) instanceOf(node string, vols []*corev1.PersistentVolume, fromDisks map[string]bool) (string, error) {
	ids := map[string]bool{}
	for _, pv := range vols {
		if id := pvInstance(pv); id != "" {
			ids[id] = true
		}
	}
	for id := range fromDisks {
		ids[id] = true
	}
	c.mu.Lock()
	if id := c.instances[node]; id != "" {
		ids[id] = true
	}
	c.mu.Unlock()
	list := make([]string, 0, len(ids))
	for id := range ids {
		list = append(list, id)
	}
	sort.Strings(list)
	if len(list) > 1 {
		return "", fmt.Errorf("node %s is named by several ECS instances: %s", node, strings.Join(list, ", "))
	}
	if len(list) == 0 {
		return "", nil
	}
	return list[0], nil
}

// candidate is a node that holds volumes and is deleted or not Ready.
type candidate struct {
	node     string
	exists   bool
	instance string
	vols     []*corev1.PersistentVolume
}

func (c *Controller) syncNodes(ctx context.Context) error {
	byNode, err := c.volumesByNode()
	if err != nil {
		return err
	}
	nodes, err := c.nodes.List(labels.Everything())
	if err != nil {
		return err
	}
	fromDisks := c.diskInstances()
	now := c.cfg.Clock.Now()
	var witnesses []string
	c.mu.Lock()
	present := map[string]bool{}
	for _, n := range nodes {
		present[n.Name] = true
		delete(c.instances, n.Name)
		if region, id := InstanceOfProviderID(n.Spec.ProviderID); id != "" && region == c.cfg.Region && c.cfg.Region != "" {
			c.instances[n.Name] = id
		}
	}
	for name := range c.instances {
		if !present[name] && byNode[name] == nil {
			delete(c.instances, name) // gone, and nothing of ours left on it
		}
	}
	c.mu.Unlock()
	for _, n := range nodes {
		if !ready(n) || len(witnesses) == maxWitnesses {
			continue
		}
		if id, err := c.instanceOf(n.Name, byNode[n.Name], fromDisks[n.Name]); err == nil && id != "" {
			witnesses = append(witnesses, id)
		}
	}
	if c.cfg.SelfInstance != "" {
		witnesses = append(witnesses, c.cfg.SelfInstance)
	}

	var cands []candidate
	seen := map[string]bool{}
	for node, vols := range byNode {
		seen[node] = true
		n, err := c.nodes.Get(node)
		exists := err == nil
		if exists && ready(n) {
			c.clearSuspect(node)
			if inst, err := c.instanceOf(node, vols, fromDisks[node]); err == nil && inst != "" {
				c.annotate(ctx, vols, inst)
			}
			continue
		}
		inst, err := c.instanceOf(node, vols, fromDisks[node])
		if err != nil {
			for _, pv := range vols {
				c.tellOnce(pv, corev1.EventTypeWarning, ReasonInstanceConflict, "%v: the controller cannot tell whether the volume's disk is lost, and deletes nothing.", err)
			}
			continue
		}
		if inst != "" {
			c.annotate(ctx, vols, inst)
		}
		if exists && (c.cfg.Cloud == nil || inst == "") {
			// A NotReady node is never gone by itself.
			c.clearSuspect(node)
			continue
		}
		if !exists {
			c.markSuspect(node, now)
		}
		cands = append(cands, candidate{node: node, exists: exists, instance: inst, vols: vols})
	}
	var errs []error
	// The capacity objects of a node deleted past the grace period go,
	// whatever its instance: they advertise disks on a node the scheduler
	// cannot use, and its provisioner writes them again if it registers.
	caps, err := c.capacities.List(labels.Everything())
	if err != nil {
		return err
	}
	for _, o := range caps {
		node := c.nodeOfCapacity(o)
		if node == "" || seen[node] {
			continue
		}
		seen[node] = true
		if _, err := c.nodes.Get(node); err == nil {
			continue
		}
		if since := c.markSuspect(node, now); now.Sub(since) >= c.cfg.GracePeriod && c.nodeGone(ctx, node) {
			errs = append(errs, c.removeCapacities(ctx, node))
		}
	}
	c.mu.Lock()
	for node := range c.suspect {
		if !seen[node] {
			delete(c.suspect, node)
		}
	}
	for node := range c.verdicts {
		if !slices.ContainsFunc(cands, func(cd candidate) bool { return cd.node == node }) {
			delete(c.verdicts, node)
		}
	}
	for id := range c.releasedSince {
		if !slices.ContainsFunc(cands, func(cd candidate) bool { return cd.instance == id }) {
			delete(c.releasedSince, id)
		}
	}
	c.mu.Unlock()
	if len(cands) == 0 {
		return errors.Join(errs...)
	}

	released, asked, cloudErr := c.askCloud(ctx, cands, witnesses)
	if cloudErr != nil {
		errs = append(errs, cloudErr)
	}
	for _, cd := range cands {
		verdict, gone := c.judge(cd, now, released, asked)
		if !gone {
			c.note(cd.node, verdict)
			continue
		}
		c.note(cd.node, "gone: "+verdict)
		if err := c.lose(ctx, cd, verdict); err != nil {
			errs = append(errs, err)
		} else if cd.instance != "" {
			// Done with it: a released instance never comes back, so ECS
			// need not be asked about it again.
			c.mu.Lock()
			c.final[cd.instance] = true
			c.mu.Unlock()
		}
	}
	return errors.Join(errs...)
}

func (c *Controller) markSuspect(node string, now time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.suspect[node]; ok {
		return t
	}
	c.suspect[node] = now
	return now
}

func (c *Controller) clearSuspect(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.suspect, node)
}

func (c *Controller) suspectSince(node string) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.suspect[node]
	return t, ok
}

// askCloud asks ECS about the candidates' instances and the witnesses. An
// instance counts as released only when ECS does not list it while it
// lists a witness in the same answer: an empty answer from a wrong region,
// account or endpoint releases nothing. asked says which instances got a
// trusted answer.
func (c *Controller) askCloud(ctx context.Context, cands []candidate, witnesses []string) (released, asked map[string]bool, err error) {
	released, asked = map[string]bool{}, map[string]bool{}
	if c.cfg.Cloud == nil {
		return released, asked, nil
	}
	var ids []string
	c.mu.Lock()
	for _, cd := range cands {
		switch {
		case cd.instance == "" || slices.Contains(ids, cd.instance):
		case c.final[cd.instance]:
			// Confirmed released and acted on: no need to ask again.
			asked[cd.instance], released[cd.instance] = true, true
		default:
			ids = append(ids, cd.instance)
		}
	}
	c.mu.Unlock()
	if len(ids) == 0 {
		return released, asked, nil
	}
	query := append(slices.Clone(ids), witnesses...)
	slices.Sort(query)
	query = slices.Compact(query)
	found, err := c.cfg.Cloud.Instances(ctx, query)
	if err != nil {
		return released, asked, fmt.Errorf("asking ECS about instances %s: %w", strings.Join(ids, ", "), err)
	}
	witnessed := false
	for _, w := range witnesses {
		if _, ok := found[w]; ok && !slices.Contains(ids, w) {
			witnessed = true
		}
	}
	for _, id := range ids {
		_, exists := found[id]
		switch {
		case exists:
			asked[id] = true
		case witnessed:
			asked[id], released[id] = true, true
		}
	}
	if !witnessed {
		klog.InfoS("ECS lists none of the instances known to be alive; its answer about missing instances is not trusted",
			"asked", ids, "witnesses", witnesses, "found", len(found))
	}
	// An instance counts as released only once ECS has kept not listing it
	// for the grace period: releasedSince is its first such answer, and an
	// answer that lists it again starts over.
	now := c.cfg.Clock.Now()
	c.mu.Lock()
	for id := range asked {
		if !released[id] {
			delete(c.releasedSince, id)
		} else if _, ok := c.releasedSince[id]; !ok {
			c.releasedSince[id] = now
		}
	}
	c.mu.Unlock()
	return released, asked, nil
}

// releasedFor is how long ECS has kept not listing the instance (0 when it
// lists it, or was not asked).
func (c *Controller) releasedFor(instance string, now time.Time) (time.Duration, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.final[instance] {
		return c.cfg.GracePeriod, now.Add(-c.cfg.GracePeriod)
	}
	t, ok := c.releasedSince[instance]
	if !ok {
		return 0, time.Time{}
	}
	return now.Sub(t), t
}

// judge says whether a candidate's volumes are lost, and why (or why not).
// On ECS, the instance must have stayed unlisted for the grace period too,
// so one wrong answer deletes nothing.
func (c *Controller) judge(cd candidate, now time.Time, released, asked map[string]bool) (string, bool) {
	if cd.exists {
		// Not Ready, with a known instance and a cloud to ask.
		if !released[cd.instance] {
			c.clearSuspect(cd.node)
			if asked[cd.instance] {
				return fmt.Sprintf("the node is not Ready, and ECS lists its instance %s", cd.instance), false
			}
			return fmt.Sprintf("the node is not Ready, and ECS has not answered for its instance %s", cd.instance), false
		}
		d, since := c.releasedFor(cd.instance, now)
		if d < c.cfg.GracePeriod {
			return fmt.Sprintf("ECS instance %s is not listed since %s; waiting out the grace period, until %s", cd.instance,
				since.UTC().Format(time.RFC3339), since.Add(c.cfg.GracePeriod).UTC().Format(time.RFC3339)), false
		}
		return fmt.Sprintf("ECS instance %s of node %s is released (not listed by ECS since %s)", cd.instance, cd.node, since.UTC().Format(time.RFC3339)), true
	}
	since, _ := c.suspectSince(cd.node)
	deleted := now.Sub(since).Round(time.Second)
	if deleted < c.cfg.GracePeriod {
		return fmt.Sprintf("Node deleted; waiting out the grace period, until %s", since.Add(c.cfg.GracePeriod).UTC().Format(time.RFC3339)), false
	}
	switch {
	case c.cfg.Cloud == nil:
		return fmt.Sprintf("Node %s was deleted (seen at %s) more than %s ago", cd.node, since.UTC().Format(time.RFC3339), c.cfg.GracePeriod), true
	case cd.instance == "":
		c.tellAll(cd.vols, corev1.EventTypeWarning, ReasonLossUnconfirmed, "Node %s has been deleted for %s, and its ECS instance is not known (no %s in the PV, no providerID seen): "+
			"the controller cannot confirm that the disk is gone, and deletes nothing.", cd.node, deleted, volumeContextInstanceID)
		return "instance unknown", false
	case !asked[cd.instance]:
		c.tellAll(cd.vols, corev1.EventTypeWarning, ReasonLossUnconfirmed, "Node %s has been deleted for %s and ECS has not confirmed that instance %s is gone: "+
			"the controller deletes nothing until it does.", cd.node, deleted, cd.instance)
		return "ECS did not answer", false
	case !released[cd.instance]:
		c.tellAll(cd.vols, corev1.EventTypeNormal, ReasonInstanceRunning, "Node %s was deleted, but ECS instance %s still exists: the volume and its data are kept, "+
			"and it serves again once the node registers again.", cd.node, cd.instance)
		return "instance exists", false
	}
	if d, rsince := c.releasedFor(cd.instance, now); d < c.cfg.GracePeriod {
		return fmt.Sprintf("ECS instance %s is not listed since %s; waiting out the grace period, until %s", cd.instance,
			rsince.UTC().Format(time.RFC3339), rsince.Add(c.cfg.GracePeriod).UTC().Format(time.RFC3339)), false
	}
	return fmt.Sprintf("Node %s was deleted (seen at %s) and ECS instance %s is released", cd.node, since.UTC().Format(time.RFC3339), cd.instance), true
}

// annotate records the instance on the node's PVs that name none.
func (c *Controller) annotate(ctx context.Context, vols []*corev1.PersistentVolume, instance string) {
	for _, pv := range vols {
		if pvInstance(pv) != "" {
			continue
		}
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"uid": pv.UID, "annotations": map[string]string{instanceAnnotation: instance}}})
		if _, err := c.cfg.Core.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			klog.ErrorS(err, "Recording the volume's ECS instance on its PV", "pv", pv.Name, "instance", instance)
		}
	}
}

// nodeGone asks the API server itself, right before a delete, whether the
// Node is still absent: the cache may lag a Node registered again.
func (c *Controller) nodeGone(ctx context.Context, node string) bool {
	_, err := c.cfg.Core.CoreV1().Nodes().Get(ctx, node, getOpts)
	return apierrors.IsNotFound(err)
}

func (c *Controller) tellAll(vols []*corev1.PersistentVolume, kind, reason, format string, a ...any) {
	for _, pv := range vols {
		c.tellOnce(pv, kind, reason, format, a...)
	}
}

// opted says whether the PV's class asks for recreation.
func (c *Controller) opted(pv *corev1.PersistentVolume) bool {
	sc, err := c.classes.Get(pv.Spec.StorageClassName)
	return err == nil && sc.Parameters[v1alpha1.ParamOnDiskLoss] == v1alpha1.OnDiskLossRecreate
}

// lose reports the node's volumes as lost and, for the classes that opt
// in, deletes their claims, Pending pods and PVs. Once the node holds none
// of the driver's volumes, its CSIStorageCapacity and LocalDisk objects go.
func (c *Controller) lose(ctx context.Context, cd candidate, why string) error {
	var errs []error
	left := 0
	for _, pv := range cd.vols {
		claim := "none"
		if r := pv.Spec.ClaimRef; r != nil {
			claim = r.Namespace + "/" + r.Name
		}
		if !c.opted(pv) {
			left++
			if c.wasTold(pv, ReasonDiskLost) {
				continue // told already: no API call every pass
			}
			msg := "%s: the local disk of volume %s (claim %s) is lost with its data. Its class %q does not set %s: %s, so nothing is deleted; " +
				"delete the claim (and a Pending pod using it) to have it recreated."
			c.tellOnce(pv, corev1.EventTypeWarning, ReasonDiskLost, msg, why, pv.Name, claim, pv.Spec.StorageClassName, v1alpha1.ParamOnDiskLoss, v1alpha1.OnDiskLossRecreate)
			c.tellClaim(ctx, pv, ReasonDiskLost, msg, why, pv.Name, claim, pv.Spec.StorageClassName, v1alpha1.ParamOnDiskLoss, v1alpha1.OnDiskLossRecreate)
			continue
		}
		msg := "%s: the local disk of volume %s (claim %s) is lost with its data. Its class %q sets %s: %s: the claim, its PV and a Pending pod using it are deleted, " +
			"so that the claim's owner recreates it on a node with a free disk."
		c.tellOnce(pv, corev1.EventTypeWarning, ReasonDiskLost, msg, why, pv.Name, claim, pv.Spec.StorageClassName, v1alpha1.ParamOnDiskLoss, v1alpha1.OnDiskLossRecreate)
		c.tellClaim(ctx, pv, ReasonDiskLost, msg, why, pv.Name, claim, pv.Spec.StorageClassName, v1alpha1.ParamOnDiskLoss, v1alpha1.OnDiskLossRecreate)
		kept, err := c.recreate(ctx, pv, cd.node)
		if err != nil {
			errs = append(errs, fmt.Errorf("volume %s: %w", pv.Name, err))
		}
		if kept || err != nil {
			left++
		}
	}
	if left == 0 {
		errs = append(errs, c.removeNodeObjects(ctx, cd))
	}
	return errors.Join(errs...)
}

// tellClaim records the event on the PV's claim, if it is still the one
// the PV was bound to.
func (c *Controller) tellClaim(ctx context.Context, pv *corev1.PersistentVolume, reason, format string, a ...any) {
	r := pv.Spec.ClaimRef
	if r == nil {
		return
	}
	pvc, err := c.cfg.Core.CoreV1().PersistentVolumeClaims(r.Namespace).Get(ctx, r.Name, getOpts)
	if err != nil || pvc.UID != r.UID {
		return
	}
	c.tellOnce(pvc, corev1.EventTypeWarning, reason, format, a...)
}

// note logs the verdict on a node when it changes.
func (c *Controller) note(node, verdict string) {
	c.mu.Lock()
	changed := c.verdicts[node] != verdict
	c.verdicts[node] = verdict
	c.mu.Unlock()
	if changed {
		klog.InfoS("Node holding volumes is deleted or not Ready", "node", node, "verdict", verdict)
	}
}
