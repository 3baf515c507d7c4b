package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
)

// staticLabel marks the static PVs of a round, by the round's StatefulSet.
const staticLabel = "e2e.localdisk.csi.alibabacloud.com/bench-round"

// staticStorageClass is the class of the static variant: local PVs made
// beforehand, bound by the scheduler when the pod is placed, as
// sig-storage-local-static-provisioner's PVs are.
func staticStorageClass() string {
	return fmt.Sprintf(`apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: %s}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
`, staticClass)
}

// makeStaticPVs makes, for the round of the StatefulSet name, one local PV
// of size bytes per disk of every node, pinned to the node by
// kubernetes.io/hostname, and waits until they are all Available. The
// nodes have no kubelet: the paths are never mounted and need not exist.
func (e *env) makeStaticPVs(ctx context.Context, name string, size int64) {
	e.t.Helper()
	var items []any
	for _, n := range e.fakes {
		for d := range n.Loops {
			items = append(items, map[string]any{
				"apiVersion": "v1",
				"kind":       "PersistentVolume",
				"metadata": map[string]any{
					"name":   fmt.Sprintf("%s-%s-%d", name, n.Name, d),
					"labels": map[string]string{staticLabel: name},
				},
				"spec": map[string]any{
					"capacity":                      map[string]string{"storage": strconv.FormatInt(size, 10)},
					"accessModes":                   []string{"ReadWriteOnce"},
					"volumeMode":                    "Filesystem",
					"persistentVolumeReclaimPolicy": "Retain",
					"storageClassName":              staticClass,
					"local":                         map[string]string{"path": fmt.Sprintf("/mnt/disks/disk%d", d)},
					"nodeAffinity": map[string]any{"required": map[string]any{"nodeSelectorTerms": []any{
						map[string]any{"matchExpressions": []any{
							map[string]any{"key": "kubernetes.io/hostname", "operator": "In", "values": []string{n.Name}},
						}},
					}}},
				},
			})
		}
	}
	list, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
	if err != nil {
		e.t.Fatal(err)
	}
	e.kubectl(ctx, string(list), "apply", "-f", "-")
	e.waitFor(ctx, name+"'s static PVs available", func() error {
		available := 0
		for _, pv := range e.list(ctx, "pv", "-l", staticLabel+"="+name) {
			if pv.Status.Phase == "Available" {
				available++
			}
		}
		if available != len(items) {
			return fmt.Errorf("%d of %d available", available, len(items))
		}
		return nil
	})
}

// checkStaticPlacement fails the test when a static PV went to two claims
// or a scheduled pod's PV is pinned to another node.
func (e *env) checkStaticPlacement(c claims) {
	e.t.Helper()
	pvs := map[string]string{}
	for claim, pv := range c.bound {
		if other, ok := pvs[pv.Metadata.Name]; ok {
			e.t.Errorf("PV %s given to both %s and %s", pv.Metadata.Name, claim, other)
		}
		pvs[pv.Metadata.Name] = claim
	}
	for name, p := range c.pods {
		pv, ok := c.bound["data-"+name]
		if p.Spec.NodeName == "" || !ok {
			continue
		}
		if node := hostnameOf(pv); node != p.Spec.NodeName {
			e.t.Errorf("pod %s runs on %s, its PV %s is pinned to %q", name, p.Spec.NodeName, pv.Metadata.Name, node)
		}
	}
}

// hostnameOf is the node a static PV is pinned to.
func hostnameOf(pv object) string {
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, ex := range term.MatchExpressions {
			if ex.Key == "kubernetes.io/hostname" && len(ex.Values) == 1 {
				return ex.Values[0]
			}
		}
	}
	return ""
}
