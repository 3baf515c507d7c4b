package e2e

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ecs-localdisk/ecs-localdisk-csi/tests/e2e/cluster"
)

var (
	benchNodes       = flag.Int("bench-nodes", 10, "kubelet-less nodes of BenchmarkStatefulSetBinding")
	benchDisks       = flag.Int("bench-disks", 5, "disks per node of BenchmarkStatefulSetBinding")
	benchRounds      = flag.Int("bench-rounds", 3, "rounds of BenchmarkStatefulSetBinding, each variant once per round; the medians are reported")
	benchQPS         = flag.Int("bench-api-qps", 0, "--kube-api-qps of kube-controller-manager and kube-scheduler (burst twice that); 0: the suite's default")
	benchProvisioner = flag.String("bench-provisioner-args", "", "flags (--name=value, separated by spaces) set on every node's csi-provisioner over the shipped arguments, which it otherwise runs with unchanged")
	benchAnnotated   = flag.Bool("bench-annotated", false, "add a fourth variant: the driver's, with claims that carry the storage-provisioner annotation from their creation (see annotatedClaims)")
)

// The StorageClasses of the benchmark's variants with volumes.
const (
	driverClass = "localdisk-ssd"      // examples/storageclasses/ssd-ext4.yaml
	staticClass = "bench-static-local" // local PVs made before each round
)

// benchVariant is one way of running the StatefulSet of a round.
type benchVariant struct {
	name   string
	prefix string // of the StatefulSets' names, followed by the round
	class  string // "": no volumes
	// static: the round claims from local PVs made before it (see
	// makeStaticPVs) rather than from the driver.
	static bool
	// annotated: the claims carry the storage-provisioner annotation from
	// their creation (see annotatedClaims).
	annotated bool
	rounds    []round
}

// BenchmarkStatefulSetBinding measures the time from creating a StatefulSet
// of K replicas, K the number of disks in the cluster, to all K claims bound
// and all pods scheduled, in three variants, one after the other in every
// round of one cluster: without volumes, with static local PVs made before
// the round (the floor of any volume the scheduler places, as with
// sig-storage-local-static-provisioner), and with the driver's volumes,
// provisioned by csi-provisioner with the shipped arguments (or those of
// -bench-provisioner-args); -bench-annotated adds a fourth. It prints, per
// variant, the milestones and per-replica steps, the API requests and the
// CPU time per round, the driver's provisioning steps against their
// budgets, and the ratios of the median round times (the target of
// driver/static is at most 1.8). Nothing is asserted about time: the
// figures depend on the machine and on what else runs on it.
func BenchmarkStatefulSetBinding(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Minute)
	defer cancel()
	var fake [][]cluster.DiskSpec
	for i := 0; i < *benchNodes; i++ {
		fake = append(fake, disks(*benchDisks, ssd))
	}
	k := *benchNodes * *benchDisks
	// Kubelet-less nodes only, their drivers and csi-provisioners run with
	// the shipped settings, the provisioners with the flag's on top.
	e := startCluster(ctx, b, topology{fake: fake, apiQPS: *benchQPS, shipped: true, provisionerArgs: strings.Fields(*benchProvisioner)})
	e.apply(ctx, "../../examples/storageclasses/ssd-ext4.yaml")
	e.apply(ctx, staticStorageClass())
	variants := []*benchVariant{
		{name: "no volumes", prefix: "plain"},
		{name: "static local PVs", prefix: "static", class: staticClass, static: true},
		{name: "driver", prefix: "vol", class: driverClass},
	}
	if *benchAnnotated {
		variants = append(variants, &benchVariant{name: "driver, annotated", prefix: "ann", class: driverClass, annotated: true})
	}
	loadBefore := runningLoad()
	for i := 0; i < *benchRounds; i++ {
		for _, v := range variants {
			v.rounds = append(v.rounds, e.runRound(ctx, v, i, k))
		}
	}
	r := benchReport{nodes: *benchNodes, disks: *benchDisks, replicas: k, variants: variants,
		provisionerArgs: e.argsOf("csi-provisioner"), driverArgs: e.argsOf("driver"), controlPlaneQPS: cmp.Or(*benchQPS, 100),
		logs: e.provisionLogs(), load: [2]string{loadBefore, runningLoad()}, driverMemory: e.driverMemory()}
	r.print(os.Stdout)
	plain, static, driver := variants[0].median(), variants[1].median(), variants[2].median()
	b.ReportMetric(plain.Seconds(), "s-without-volumes")
	b.ReportMetric(static.Seconds(), "s-static")
	b.ReportMetric(driver.Seconds(), "s-with-volumes")
	b.ReportMetric(driver.Seconds()/static.Seconds(), "ratio-static")
	b.ReportMetric(driver.Seconds()/plain.Seconds(), "ratio")
}

// milestones are the steps of one StatefulSet round, per replica, in the
// order they happen. A round without volumes has only "pod created" and
// "pod scheduled"; one with static PVs has no "node selected" (the
// scheduler binds the PV itself: its "PV created" is the PV getting the
// claim's claimRef) and no "provisioner annotated".
var milestones = []string{
	"claim created",         // StatefulSet controller
	"pod created",           // StatefulSet controller
	"node selected",         // scheduler: selected-node annotation on the claim
	"provisioner annotated", // PV controller: volume.kubernetes.io/storage-provisioner on the claim
	"PV created",            // csi-provisioner and the driver's CreateVolume (static: the scheduler's claimRef)
	"claim bound",           // PV controller
	"pod scheduled",         // scheduler, after its volume binding wait
}

// round is what runRound measured.
type round struct {
	took time.Duration
	// last holds, per milestone, when the last replica reached it.
	last map[string]time.Duration
	// replicas holds, per replica (ordinal), when it reached each
	// milestone; claims holds each replica's claim name and UID.
	replicas map[string]map[string]time.Time
	claims   map[string]claimID
	created  time.Time // when the StatefulSet arrived
	// api is the apiserver's requests during the round, by "VERB
	// resource[/subresource]".
	api map[string]float64
	// cpu is the CPU seconds the cluster's programs used during the
	// round; drv the drivers' own metrics of it (see driverMetricNames).
	cpu, drv map[string]float64
}

type claimID struct{ name, uid string }

// runRound creates a StatefulSet of k replicas in variant v (claiming from
// v.class, or without volumes), measures the time until all pods are
// scheduled and all claims bound, with the milestones on the way and the
// apiserver's requests meanwhile, then removes it and waits until every
// disk is free again.
func (e *env) runRound(ctx context.Context, v *benchVariant, i, k int) round {
	name := fmt.Sprintf("%s%d", v.prefix, i)
	if v.static {
		e.makeStaticPVs(ctx, name, ssd.SizeBytes)
	}
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	p := e.follow(fctx, name)
	before, cpuBefore, drvBefore := e.apiRequests(ctx), e.cpuSeconds(), e.driverMetrics(ctx, driverMetricNames...)
	sts := statefulSet(name, v.class, k, "512Mi")
	if v.annotated {
		sts = annotatedClaims(e.t, sts)
	}
	e.apply(ctx, sts)
	// The round ends when the informers saw every replica's pod scheduled
	// and claim bound: no polling of the API inside the round, whose
	// requests are counted.
	e.waitFor(ctx, name+" scheduled and bound", func() error {
		s, c := p.count("pod scheduled"), p.count("claim bound")
		if s != k || (v.class != "" && c != k) {
			return fmt.Errorf("%d scheduled, %d bound of %d (as the informers saw them)", s, c, k)
		}
		return nil
	})
	after, cpuAfter, drvAfter := e.apiRequests(ctx), e.cpuSeconds(), e.driverMetrics(ctx, driverMetricNames...)
	stop()
	res := round{last: map[string]time.Duration{}, replicas: map[string]map[string]time.Time{},
		api: benchDiff(after, before), cpu: benchDiff(cpuAfter, cpuBefore), drv: benchDiff(drvAfter, drvBefore)}
	p.mu.Lock()
	res.created, res.claims = p.created, p.claims
	for m, replicas := range p.reached {
		for r, at := range replicas {
			if res.replicas[r] == nil {
				res.replicas[r] = map[string]time.Time{}
			}
			res.replicas[r][m] = at
		}
		if len(replicas) != k || p.created.IsZero() {
			continue // not every replica seen: no figure rather than a wrong one
		}
		for _, at := range replicas {
			res.last[m] = max(res.last[m], at.Sub(p.created))
		}
	}
	p.mu.Unlock()
	// Time runs from the StatefulSet's arrival (not counting kubectl's
	// start) to the last milestone, both as the informers saw them.
	res.took = max(res.last["pod scheduled"], res.last["claim bound"])

	c := e.claimsOf(ctx, name)
	if c.scheduled != k || (v.class != "" && len(c.bound) != k) {
		e.t.Fatalf("%s: the informers saw the end, the API has %d scheduled, %d bound of %d", name, c.scheduled, len(c.bound), k)
	}
	switch {
	case v.static:
		e.checkStaticPlacement(c)
	case v.class != "":
		e.checkPlacement(c)
	}
	e.removeRound(ctx, name, v)
	return res
}

// annotatedClaims gives the claim template of the StatefulSet sts the
// annotation the PV controller otherwise adds to each claim once the
// scheduler has selected its node (volume.kubernetes.io/storage-provisioner,
// and its beta name, with the driver's name): what csi-provisioner waits
// for, besides the selected node, before it provisions. The PV controller
// then finds it set and skips its write; provisioning itself stays
// dynamic. The variant measures what that pass of the PV controller, one
// claim at a time, costs.
func annotatedClaims(t testing.TB, sts string) string {
	t.Helper()
	const template = "- metadata: {name: data}"
	if !strings.Contains(sts, template) {
		t.Fatalf("no claim template %q in\n%s", template, sts)
	}
	return strings.Replace(sts, template, fmt.Sprintf("- metadata: {name: data, annotations: {volume.kubernetes.io/storage-provisioner: %[1]s, volume.beta.kubernetes.io/storage-provisioner: %[1]s}}",
		cluster.DriverName), 1)
}

// diff is after - before, by key, where positive.
func benchDiff(after, before map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, n := range after {
		if d := n - before[k]; d > 0 {
			out[k] = d
		}
	}
	return out
}

// removeRound deletes the round's StatefulSet, pods and claims (and the
// static PVs) and waits until every disk is free again.
func (e *env) removeRound(ctx context.Context, name string, v *benchVariant) {
	e.kubectl(ctx, "", "delete", "statefulset", "-n", "default", name, "--wait=false")
	e.forceDeletePods(ctx, "-l", "app="+name)
	if v.class != "" {
		e.kubectl(ctx, "", "delete", "pvc", "-n", "default", "--all", "--wait=false")
	}
	if v.static {
		e.kubectl(ctx, "", "delete", "pv", "-l", staticLabel+"="+name, "--wait=false")
	}
	e.waitFor(ctx, name+" gone, disks free", func() error {
		if pods := e.list(ctx, "pods", "-n", "default"); len(pods) > 0 {
			return fmt.Errorf("%d pods left", len(pods))
		}
		if pvs := e.list(ctx, "pv"); len(pvs) > 0 {
			return fmt.Errorf("%d PVs left", len(pvs))
		}
		for _, n := range e.fakes {
			if got := e.capacity(ctx, n.Name); got < int64(*benchDisks)*(gib-4<<20) {
				return fmt.Errorf("%s reports %d bytes free", n.Name, got)
			}
		}
		return nil
	})
}

// progress holds when each replica of one StatefulSet (by its ordinal)
// first reached each milestone, and when the StatefulSet arrived.
type progress struct {
	mu      sync.Mutex
	created time.Time
	reached map[string]map[string]time.Time
	claims  map[string]claimID // by replica
}

func (p *progress) mark(m, replica string) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reached[m] == nil {
		p.reached[m] = map[string]time.Time{}
	}
	if _, ok := p.reached[m][replica]; !ok {
		p.reached[m][replica] = now
	}
}

func (p *progress) count(m string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.reached[m])
}

// follow records, from informers until ctx ends, the progress of the
// StatefulSet name. (Informers rather than kubectl watches, which end for
// good on a watch error and fall behind on a loaded machine.) It returns
// once the informers have synced.
func (e *env) follow(ctx context.Context, name string) *progress {
	e.t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", e.cp.Kubeconfig)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	p := &progress{reached: map[string]map[string]time.Time{}, claims: map[string]claimID{}}
	claimPrefix, podPrefix := "data-"+name+"-", name+"-"
	factory := informers.NewSharedInformerFactory(client, 0)
	on := func(inf cache.SharedIndexInformer, seen func(obj any)) {
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    seen,
			UpdateFunc: func(_, obj any) { seen(obj) },
		}); err != nil {
			e.t.Fatal(err)
		}
	}
	on(factory.Core().V1().PersistentVolumeClaims().Informer(), func(obj any) {
		c := obj.(*corev1.PersistentVolumeClaim)
		if r, ok := strings.CutPrefix(c.Name, claimPrefix); ok {
			p.mark("claim created", r)
			p.mu.Lock()
			p.claims[r] = claimID{name: c.Name, uid: string(c.UID)}
			p.mu.Unlock()
			if c.Annotations["volume.kubernetes.io/selected-node"] != "" {
				p.mark("node selected", r)
			}
			// What csi-provisioner waits for, besides the selected node,
			// before it provisions a WaitForFirstConsumer claim.
			if c.Annotations["volume.kubernetes.io/storage-provisioner"] != "" {
				p.mark("provisioner annotated", r)
			}
			if c.Status.Phase == corev1.ClaimBound {
				p.mark("claim bound", r)
			}
		}
	})
	on(factory.Core().V1().PersistentVolumes().Informer(), func(obj any) {
		if ref := obj.(*corev1.PersistentVolume).Spec.ClaimRef; ref != nil {
			if r, ok := strings.CutPrefix(ref.Name, claimPrefix); ok {
				p.mark("PV created", r)
			}
		}
	})
	on(factory.Core().V1().Pods().Informer(), func(obj any) {
		pod := obj.(*corev1.Pod)
		if r, ok := strings.CutPrefix(pod.Name, podPrefix); ok {
			p.mark("pod created", r)
			if pod.Spec.NodeName != "" {
				p.mark("pod scheduled", r)
			}
		}
	})
	on(factory.Apps().V1().StatefulSets().Informer(), func(obj any) {
		if obj.(*appsv1.StatefulSet).Name == name {
			p.mu.Lock()
			if p.created.IsZero() {
				p.created = time.Now()
			}
			p.mu.Unlock()
		}
	})
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			e.t.Fatalf("informer for %v not synced", typ)
		}
	}
	e.t.Cleanup(factory.Shutdown)
	return p
}
