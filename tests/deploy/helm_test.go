package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"sigs.k8s.io/kustomize/api/provider"
	"sigs.k8s.io/kustomize/api/resmap"
	"sigs.k8s.io/kustomize/kyaml/kio"
	"sigs.k8s.io/kustomize/kyaml/yaml"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/tests/deploy/internal/helmchart"
)

const chartDir = "../../deploy/helm/ecs-localdisk-csi"

// overlayValues are, per overlay, the chart values (over BaseSets) that
// render the same objects as the overlay.
var overlayValues = map[string][]string{
	"ecs":    nil,
	"static": {"diskSource=static", "static.devices=" + disk.PlaceholderPattern},
}

// tryChart renders the chart into namespace with sets (in --set form) over
// its defaults.
func tryChart(namespace string, sets ...string) (map[string]string, error) {
	vals, err := helmchart.Values(sets...)
	if err != nil {
		return nil, err
	}
	return helmchart.Render(chartDir, namespace, vals)
}

func renderChart(t *testing.T, namespace string, sets ...string) map[string]string {
	t.Helper()
	files, err := tryChart(namespace, sets...)
	if err != nil {
		t.Fatalf("helm template --namespace %s --set %s: %v", namespace, strings.Join(sets, ","), err)
	}
	return files
}

// chartResMap reads rendered templates into kustomize's resource map, so
// the helpers of the overlay tests apply to the chart's output too.
func chartResMap(t *testing.T, files map[string]string) resmap.ResMap {
	t.Helper()
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(files)) {
		b.WriteString("---\n")
		b.WriteString(files[name])
	}
	m, err := resmap.NewFactory(provider.NewDefaultDepProvider().GetResourceFactory()).NewResMapFromBytes([]byte(b.String()))
	if err != nil {
		t.Fatalf("the chart renders what kustomize cannot read: %v\n%s", err, b.String())
	}
	return m
}

// objects returns m's objects by "Kind namespace/name", decoded as the API
// server decodes them (comments and key order gone), after replacing each
// key of rename by its value in their text.
func objects(t *testing.T, m resmap.ResMap, rename map[string]string) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, r := range m.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		s := string(y)
		for from, to := range rename {
			s = strings.ReplaceAll(s, from, to)
		}
		var obj map[string]any
		if err := sigsyaml.Unmarshal([]byte(s), &obj); err != nil {
			t.Fatal(err)
		}
		meta, _ := obj["metadata"].(map[string]any)
		key := fmt.Sprintf("%s %v/%v", obj["kind"], meta["namespace"], meta["name"])
		if _, dup := out[key]; dup {
			t.Fatalf("%s rendered twice", key)
		}
		out[key] = obj
	}
	return out
}

// dig returns the map at path in obj, nil when there is none.
func dig(obj map[string]any, path ...string) map[string]any {
	for _, p := range path {
		next, ok := obj[p].(map[string]any)
		if !ok {
			return nil
		}
		obj = next
	}
	return obj
}

// TestBaseIsTheChartRendered: deploy/kubernetes/base is, file for file, the
// chart rendered with its defaults, as the generator writes it.
func TestBaseIsTheChartRendered(t *testing.T) {
	want, err := helmchart.Base(chartDir)
	if err != nil {
		t.Fatalf("rendering the chart: %v", err)
	}
	dir := filepath.Join(root, "base")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]byte{}
	for _, e := range entries {
		if e.Type().IsRegular() {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			got[e.Name()] = b
		}
	}
	for _, name := range slices.Sorted(maps.Keys(union(got, want))) {
		g, inBase := got[name]
		w, inChart := want[name]
		switch {
		case !inChart:
			t.Errorf("base/%s is not rendered from the chart", name)
		case !inBase:
			t.Errorf("base/%s is missing; the chart renders it", name)
		case !bytes.Equal(g, w):
			t.Errorf("base/%s is not the chart's render (-base +chart):\n%s", name, cmp.Diff(lines(g), lines(w)))
		}
	}
	if t.Failed() {
		t.Errorf("deploy/kubernetes/base is generated from deploy/helm/ecs-localdisk-csi; regenerate it: cd tests/deploy && %s", helmchart.Command)
	}
}

// lines splits b into lines, for a diff that shows them whole.
func lines(b []byte) []string {
	return strings.Split(string(b), "\n")
}

// union holds the keys of a and b.
func union[V any](a, b map[string]V) map[string]V {
	out := maps.Clone(a)
	maps.Copy(out, b)
	return out
}

// TestChartMatchesOverlays: each overlay, built as kubectl kustomize does,
// holds the same objects as the chart rendered with the overlay's values.
// Only the roll-out trigger of the static device list differs: kustomize's
// hash suffix on the ConfigMap name against the chart's checksum
// annotation on the pod template.
func TestChartMatchesOverlays(t *testing.T) {
	overlays, err := os.ReadDir(filepath.Join(root, "overlays"))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range overlays {
		sets, ok := overlayValues[o.Name()]
		if !ok {
			t.Errorf("overlay %s: no chart values to compare it with in overlayValues", o.Name())
			continue
		}
		t.Run(o.Name(), func(t *testing.T) {
			built := render(t, filepath.Join(root, "overlays", o.Name()))
			rename := hashedNames(t, filepath.Join(root, "overlays", o.Name()), built)
			overlay := objects(t, built, rename)
			chart := objects(t, chartResMap(t, renderChart(t, helmchart.Namespace, slices.Concat(helmchart.BaseSets, sets)...)), nil)
			for _, obj := range chart {
				if a := dig(obj, "spec", "template", "metadata", "annotations"); a != nil {
					delete(a, "checksum/static-devices")
					if len(a) == 0 {
						delete(dig(obj, "spec", "template", "metadata"), "annotations")
					}
				}
			}
			for _, key := range slices.Sorted(maps.Keys(union(overlay, chart))) {
				o, inOverlay := overlay[key]
				c, inChart := chart[key]
				switch {
				case !inChart:
					t.Errorf("%s: in the overlay, not rendered by the chart with %v", key, sets)
				case !inOverlay:
					t.Errorf("%s: rendered by the chart with %v, not in the overlay", key, sets)
				default:
					if diff := cmp.Diff(o, c); diff != "" {
						t.Errorf("%s differs (-overlay +chart with %v):\n%s", key, sets, diff)
					}
				}
			}
		})
	}
}

// hashedNames maps the names kustomize gave the objects of the generators
// of the kustomization in dir (name-hash) back to the generators' names.
func hashedNames(t *testing.T, dir string, built resmap.ResMap) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		ConfigMapGenerator []struct{ Name string } `json:"configMapGenerator"`
		SecretGenerator    []struct{ Name string } `json:"secretGenerator"`
	}
	if err := sigsyaml.Unmarshal(b, &k); err != nil {
		t.Fatal(err)
	}
	rename := map[string]string{}
	for _, g := range slices.Concat(k.ConfigMapGenerator, k.SecretGenerator) {
		hashed := regexp.MustCompile(`^` + regexp.QuoteMeta(g.Name) + `-[a-z0-9]{10}$`)
		for _, r := range built.Resources() {
			if hashed.MatchString(r.GetName()) {
				rename[r.GetName()] = g.Name
			}
		}
	}
	return rename
}

// TestOverlaysPinTheChartAppVersion: every overlay pins the driver image
// the chart runs by default, and Chart.yaml carries version and appVersion
// each on a line of its own, as the release stamps them.
func TestOverlaysPinTheChartAppVersion(t *testing.T) {
	c, err := helmchart.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for re, want := range map[string]string{
		`(?m)^version: *"?([^"\s]+)"?$`:    c.Metadata.Version,
		`(?m)^appVersion: *"?([^"\s]+)"?$`: c.Metadata.AppVersion,
	} {
		m := regexp.MustCompile(re).FindAllStringSubmatch(string(raw), -1)
		if len(m) != 1 || m[0][1] != want {
			t.Errorf("Chart.yaml: lines matching %s: %q; want one, holding %s", re, m, want)
		}
	}
	repo, _ := dig(c.Values, "image")["repository"].(string)
	overlays, _ := filepath.Glob(filepath.Join(root, "overlays", "*", "kustomization.yaml"))
	if len(overlays) < 2 {
		t.Fatalf("overlays: %v", overlays)
	}
	for _, k := range overlays {
		b, err := os.ReadFile(k)
		if err != nil {
			t.Fatal(err)
		}
		n, err := yaml.Parse(string(b))
		if err != nil {
			t.Fatal(err)
		}
		pin, _ := n.Pipe(yaml.Lookup("images", "[name="+repo+"]"))
		if pin == nil {
			t.Errorf("%s pins no image %s", k, repo)
			continue
		}
		if got := field(t, pin, "newName"); got != repo {
			t.Errorf("%s: newName %s, the chart's image.repository is %s", k, got, repo)
		}
		if got := field(t, pin, "newTag"); got != c.Metadata.AppVersion {
			t.Errorf("%s: newTag %s, the chart's appVersion is %s", k, got, c.Metadata.AppVersion)
		}
	}
}

// TestChartStaticNeedsDevices: diskSource=static without a device list
// fails, naming the value to set and why nothing is assumed.
func TestChartStaticNeedsDevices(t *testing.T) {
	for _, sets := range [][]string{
		{"diskSource=static"},
		{"diskSource=static", "static.devices="},
		{"diskSource=static", "static.devices=null"},
	} {
		_, err := tryChart(helmchart.Namespace, sets...)
		if err == nil {
			t.Errorf("--set %s renders", strings.Join(sets, ","))
			continue
		}
		for _, want := range []string{"static.devices", "/dev/disk/by-id", "glob", "cloud disk", "diskSource=ecs"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("--set %s: the error does not mention %q: %v", strings.Join(sets, ","), want, err)
			}
		}
	}
}

// TestChartStaticDevices: the device list, as a list or a string, reaches
// the driver's --devices through the ConfigMap, the driver accepts it, and
// a new list changes the pod template so the pods restart and read it.
func TestChartStaticDevices(t *testing.T) {
	const want = "/dev/vdb,/dev/disk/by-id/virtio-bp1local2"
	checksums := map[string]bool{}
	for _, sets := range [][]string{
		{"diskSource=static", "static.devices={/dev/vdb,/dev/disk/by-id/virtio-bp1local2}"},
		{"diskSource=static", `static.devices=/dev/vdb\,/dev/disk/by-id/virtio-bp1local2`},
		{"diskSource=static", "static.devices=/dev/vdc"},
	} {
		m := chartResMap(t, renderChart(t, helmchart.Namespace, sets...))
		ds := get(t, m, "DaemonSet", "ecs-localdisk-csi-node")
		checksums[field(t, ds, "spec", "template", "metadata", "annotations", "checksum/static-devices")] = true
		checkDaemonSet(t, ds, "static")
		if envFrom := lookup(container(t, ds, "driver"), "envFrom"); envFrom != nil {
			t.Errorf("static driver reads the ECS credentials: %s", envFrom.MustString())
		}
		args := driverArgs(t, m)
		if sets[1] == "static.devices=/dev/vdc" {
			if got := flagValue(args, "--devices"); got != "/dev/vdc" {
				t.Errorf("--devices expands to %q", got)
			}
			continue
		}
		if got := flagValue(args, "--devices"); got != want {
			t.Errorf("--set %s: --devices expands to %q, want %q", strings.Join(sets, ","), got, want)
		}
		if src, err := newStaticSource(t, args); err != nil || src.String() != "static:"+want {
			t.Errorf("the driver refuses the chart's devices: %v %v", src, err)
		}
	}
	if len(checksums) != 2 {
		t.Errorf("pod template checksums of two device lists, one given twice: %v", checksums)
	}
	m := chartResMap(t, renderChart(t, helmchart.Namespace, overlayValues["static"]...))
	if _, err := newStaticSource(t, driverArgs(t, m)); !errors.Is(err, disk.ErrPlaceholderPattern) {
		t.Errorf("the driver started from the chart with the placeholder device list: %v", err)
	}
}

// TestChartRefusesBadValues: values the driver could not run with, or
// would silently ignore, fail the render with a message naming them.
func TestChartRefusesBadValues(t *testing.T) {
	for _, c := range []struct {
		sets []string
		want string
	}{
		{[]string{"diskSource=local"}, `diskSource is "local"`},
		{[]string{"static.devices=/dev/vdb"}, "static.devices is only read with diskSource=static"},
		{[]string{"storageClasses[0].name=x", "storageClasses[0].reclaimPolicy=Recycle"}, `reclaimPolicy "Recycle"`},
		{[]string{"storageClasses[0].parameters.media=ssd"}, "needs a name"},
		{[]string{"sidecars.csiProvisioner.image.tag="}, "image.tag"},
		{[]string{"sidecars.csiProvisioner.kubeAPIQPS=0"}, "must be positive"},
		{[]string{"sidecars.csiProvisioner.kubeAPIBurst=-1"}, "must be positive"},
	} {
		_, err := tryChart(helmchart.Namespace, c.sets...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--set %s: %v; want an error saying %q", strings.Join(c.sets, ","), err, c.want)
		}
	}
}

// TestChartStorageClasses: every example StorageClass, given to the chart
// as an item of storageClasses, renders as that very object, for the
// driver's name and WaitForFirstConsumer, with parameters and mount
// options the driver accepts.
func TestChartStorageClasses(t *testing.T) {
	if files := renderChart(t, helmchart.Namespace); files["storageclasses.yaml"] != "" {
		t.Errorf("the defaults render StorageClasses:\n%s", files["storageclasses.yaml"])
	}
	paths, _ := filepath.Glob("../../examples/storageclasses/*.yaml")
	examples := map[string]map[string]any{}
	var items []any
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		nodes, err := kio.FromBytes(b)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		for _, n := range nodes {
			if n.GetKind() != "StorageClass" {
				continue
			}
			var obj map[string]any
			if err := sigsyaml.Unmarshal([]byte(n.MustString()), &obj); err != nil {
				t.Fatal(err)
			}
			item := map[string]any{"name": n.GetName()}
			for _, k := range []string{"reclaimPolicy", "parameters", "mountOptions"} {
				if v, ok := obj[k]; ok {
					item[k] = v
				}
			}
			items = append(items, item)
			if _, ok := obj["allowVolumeExpansion"]; !ok {
				obj["allowVolumeExpansion"] = false // the API's default, which the chart spells out
			}
			examples[n.GetName()] = obj
		}
	}
	if len(items) < 3 {
		t.Fatalf("only %d example StorageClasses", len(items))
	}
	files, err := helmchart.Render(chartDir, helmchart.Namespace, map[string]any{"storageClasses": items})
	if err != nil {
		t.Fatal(err)
	}
	m := chartResMap(t, files)
	rendered := objects(t, m, nil)
	for name, want := range examples {
		checkClass(t, "storageClasses "+name, get(t, m, "StorageClass", name))
		got := rendered["StorageClass <nil>/"+name]
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("StorageClass %s (-example +chart):\n%s", name, diff)
		}
	}
}

// TestChartValuesLand: each value reaches the field it is documented to
// set, and maps merge with their defaults as Helm merges them.
func TestChartValuesLand(t *testing.T) {
	m := chartResMap(t, renderChart(t, helmchart.Namespace,
		"image.repository=registry.example/ecs-localdisk-csi", "image.tag=v9.9.9", "image.pullPolicy=Always",
		"sidecars.csiProvisioner.image.repository=mirror.example/csi-provisioner",
		"sidecars.csiProvisioner.kubeAPIQPS=2.5", "sidecars.csiProvisioner.kubeAPIBurst=7",
		"sidecars.nodeDriverRegistrar.image.tag=v2.99.0",
		"sidecars.livenessProbe.resources.requests.cpu=5m",
		"nodeSelector.disktype=local",
		`nodeSelector.kubernetes\.io/os=null`,
		"tolerations[0].key=dedicated", "tolerations[0].operator=Equal", "tolerations[0].value=storage", "tolerations[0].effect=NoSchedule",
		"resources.limits.memory=1Gi",
		"priorityClassName=storage-critical",
		"logVerbosity=5",
		"extraArgs[0]=--ecs-endpoint=ecs-vpc.cn-hangzhou.aliyuncs.com",
		"ecs.credentialsSecret=my-keys",
	))
	ds := get(t, m, "DaemonSet", "ecs-localdisk-csi-node")
	drv := container(t, ds, "driver")
	for _, c := range []struct {
		node *yaml.RNode
		path []string
		want string
	}{
		{drv, []string{"image"}, "registry.example/ecs-localdisk-csi:v9.9.9"},
		{drv, []string{"imagePullPolicy"}, "Always"},
		{drv, []string{"resources", "limits", "memory"}, "1Gi"},
		{drv, []string{"resources", "requests", "cpu"}, "10m"},
		{drv, []string{"envFrom"}, "- secretRef:\n    name: my-keys\n    optional: true"},
		{container(t, ds, "csi-provisioner"), []string{"image"}, "mirror.example/csi-provisioner:v6.4.0"},
		{container(t, ds, "node-driver-registrar"), []string{"image"}, "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.99.0"},
		{container(t, ds, "liveness-probe"), []string{"resources", "requests", "cpu"}, "5m"},
		{container(t, ds, "liveness-probe"), []string{"resources", "limits", "memory"}, "64Mi"},
		{ds, []string{"spec", "template", "spec", "priorityClassName"}, "storage-critical"},
		{ds, []string{"spec", "template", "spec", "nodeSelector"}, "disktype: local\nlocaldisk.csi.alibabacloud.com/local-disks: \"true\""},
		{ds, []string{"spec", "template", "spec", "tolerations"}, "- effect: NoSchedule\n  key: dedicated\n  operator: Equal\n  value: storage"},
	} {
		if got := field(t, c.node, c.path...); got != c.want {
			t.Errorf("%s = %q, want %q", strings.Join(c.path, "."), got, c.want)
		}
	}
	for _, name := range []string{"driver", "csi-provisioner", "node-driver-registrar"} {
		if args := field(t, container(t, ds, name), "args"); !slices.Contains(strings.Split(args, "\n"), "- --v=5") {
			t.Errorf("%s args lack --v=5:\n%s", name, args)
		}
	}
	if args := strings.Split(field(t, container(t, ds, "csi-provisioner"), "args"), "\n"); !slices.Contains(args, "- --kube-api-qps=2.5") || !slices.Contains(args, "- --kube-api-burst=7") {
		t.Errorf("csi-provisioner args lack --kube-api-qps=2.5 and --kube-api-burst=7:\n%s", strings.Join(args, "\n"))
	}
	if args := field(t, drv, "args"); !strings.HasSuffix(args, "- --disk-source=ecs\n- --metrics-address=:9810\n- --ecs-endpoint=ecs-vpc.cn-hangzhou.aliyuncs.com") {
		t.Errorf("driver args do not end with the extra argument:\n%s", args)
	}

	ds = get(t, chartResMap(t, renderChart(t, helmchart.Namespace, "ecs.credentialsSecret=")), "DaemonSet", "ecs-localdisk-csi-node")
	if envFrom := lookup(container(t, ds, "driver"), "envFrom"); envFrom != nil {
		t.Errorf("ecs.credentialsSecret empty still renders envFrom: %s", envFrom.MustString())
	}
}

// TestChartControllerValues: the controller.* values reach the cluster
// component's Deployment; cloud follows diskSource unless set; bad values
// and turning it off are handled.
func TestChartControllerValues(t *testing.T) {
	m := chartResMap(t, renderChart(t, helmchart.Namespace, "controller.replicas=3", "controller.nodeLossGracePeriod=5m",
		"controller.acceptDiskEvents=true", "controller.tolerations[0].operator=Exists", "controller.resources.limits.memory=64Mi"))
	d := get(t, m, "Deployment", "ecs-localdisk-csi-controller")
	c := container(t, d, "controller")
	args := strings.Split(field(t, c, "args"), "\n")
	for _, want := range []string{"- controller", "- --cloud=ecs", "- --node-loss-grace-period=5m", "- --accept-disk-events"} {
		if !slices.Contains(args, want) {
			t.Errorf("controller args lack %s: %q", want, args)
		}
	}
	for path, want := range map[string]string{"spec.replicas": "3", "spec.template.spec.tolerations": "- operator: Exists"} {
		if got := field(t, d, strings.Split(path, ".")...); got != want {
			t.Errorf("%s = %q, want %q", path, got, want)
		}
	}
	if got := field(t, c, "resources", "limits", "memory"); got != "64Mi" {
		t.Errorf("controller memory limit %q", got)
	}
	// Off by default: no consent.
	c = container(t, get(t, chartResMap(t, renderChart(t, helmchart.Namespace)), "Deployment", "ecs-localdisk-csi-controller"), "controller")
	if args := field(t, c, "args"); strings.Contains(args, "--accept-disk-events") {
		t.Errorf("--accept-disk-events on by default:\n%s", args)
	}
	// diskSource=static: no cloud to ask, unless set.
	static := chartResMap(t, renderChart(t, helmchart.Namespace, "diskSource=static", "static.devices={/dev/vdb}"))
	if args := field(t, container(t, get(t, static, "Deployment", "ecs-localdisk-csi-controller"), "controller"), "args"); !strings.Contains(args, "- --cloud=none\n") {
		t.Errorf("static: controller args\n%s", args)
	}
	if _, err := tryChart(helmchart.Namespace, "controller.cloud=aws"); err == nil || !strings.Contains(err.Error(), "controller.cloud") {
		t.Errorf("controller.cloud=aws: %v", err)
	}
	off := chartResMap(t, renderChart(t, helmchart.Namespace, "controller.enabled=false"))
	for _, r := range off.Resources() {
		if strings.Contains(r.GetName(), "controller") {
			t.Errorf("controller.enabled=false renders %s %s", r.GetKind(), r.GetName())
		}
	}
}

// TestChartFollowsTheReleaseNamespace: installed into another namespace,
// every namespaced object and every reference to the service account is
// there, and no Namespace object is rendered unless asked for.
func TestChartFollowsTheReleaseNamespace(t *testing.T) {
	const ns = "storage-system"
	files := renderChart(t, ns)
	if _, ok := files["namespace.yaml"]; ok {
		t.Errorf("a Namespace is rendered by default; helm install --create-namespace owns it")
	}
	all := strings.Join(slices.Collect(maps.Values(files)), "\n")
	if regexp.MustCompile(`(?m)namespace: ` + helmchart.Namespace + `$`).MatchString(all) {
		t.Errorf("the render names namespace %s:\n%s", helmchart.Namespace, all)
	}
	m := chartResMap(t, files)
	for _, r := range m.Resources() {
		switch r.GetKind() {
		case "ClusterRole", "ClusterRoleBinding", "CSIDriver", "StorageClass", "CustomResourceDefinition", "ValidatingAdmissionPolicy",
			"ValidatingAdmissionPolicyBinding":
		default:
			if r.GetNamespace() != ns {
				t.Errorf("%s %s in namespace %q", r.GetKind(), r.GetName(), r.GetNamespace())
			}
		}
	}
	for _, kind := range []string{"ClusterRoleBinding", "RoleBinding"} {
		for _, r := range m.Resources() {
			if r.GetKind() != kind {
				continue
			}
			n, _ := yaml.Parse(r.MustYaml())
			sa := "ecs-localdisk-csi-node"
			if strings.HasSuffix(r.GetName(), "-controller") {
				sa = "ecs-localdisk-csi-controller"
			}
			if got := field(t, n, "subjects", "[name="+sa+"]", "namespace"); got != ns {
				t.Errorf("%s %s: subject in namespace %q", kind, r.GetName(), got)
			}
		}
	}
	// The admission policy keeps the driver's own service account, in the
	// release namespace, to its node.
	policy := get(t, m, "ValidatingAdmissionPolicy", "ecs-localdisk-csi-node-own-disks")
	if got := field(t, policy, "spec", "matchConditions", "[name=node-driver]", "expression"); !strings.Contains(got, "'system:serviceaccount:"+ns+":ecs-localdisk-csi-node'") {
		t.Errorf("admission policy matches %s", got)
	}
	if got := field(t, get(t, chartResMap(t, renderChart(t, ns, "createNamespace=true")), "Namespace", ns), "metadata", "name"); got != ns {
		t.Errorf("createNamespace=true renders namespace %q", got)
	}
}

// TestChartPinsImages: in every mode every container image carries a tag,
// and none is latest.
func TestChartPinsImages(t *testing.T) {
	for _, sets := range overlayValues {
		files := renderChart(t, helmchart.Namespace, slices.Concat(helmchart.BaseSets, sets)...)
		for name, text := range files {
			if strings.Contains(text, ":latest") {
				t.Errorf("%s with %v mentions :latest", name, sets)
			}
		}
		ds := get(t, chartResMap(t, files), "DaemonSet", "ecs-localdisk-csi-node")
		list, err := ds.Pipe(yaml.Lookup("spec", "template", "spec", "containers"))
		if err != nil || list == nil {
			t.Fatal("no containers")
		}
		elems, _ := list.Elements()
		for _, c := range elems {
			image := field(t, c, "image")
			_, tag, ok := strings.Cut(image[strings.LastIndex(image, "/")+1:], ":")
			if !ok || tag == "" || tag == "latest" {
				t.Errorf("container %s: image %q is not pinned to a tag", field(t, c, "name"), image)
			}
		}
	}
}

// TestChartLints: helm lint finds nothing above information in the chart,
// with its defaults and in static mode.
func TestChartLints(t *testing.T) {
	for _, sets := range overlayValues {
		vals, err := helmchart.Values(sets...)
		if err != nil {
			t.Fatal(err)
		}
		l := lint.All(chartDir, vals, helmchart.Namespace, false)
		for _, msg := range l.Messages {
			if msg.Severity > support.InfoSev {
				t.Errorf("helm lint --set %s: %v", strings.Join(sets, ","), msg)
			} else {
				t.Logf("helm lint: %v", msg)
			}
		}
	}
}

// TestChartMetrics: metrics are on by default on the documented port (an
// argument and a named container port); metrics.port=0 removes both; the
// PodMonitor is rendered only when asked for and scrapes that port.
func TestChartMetrics(t *testing.T) {
	ds := get(t, chartResMap(t, renderChart(t, helmchart.Namespace)), "DaemonSet", "ecs-localdisk-csi-node")
	drv := container(t, ds, "driver")
	if args := field(t, drv, "args"); !slices.Contains(strings.Split(args, "\n"), "- --metrics-address=:9810") {
		t.Errorf("driver args lack --metrics-address=:9810:\n%s", args)
	}
	if got := field(t, drv, "ports", "[name=metrics]", "containerPort"); got != "9810" {
		t.Errorf("metrics container port %q", got)
	}
	files := renderChart(t, helmchart.Namespace, "metrics.port=0")
	ds = get(t, chartResMap(t, files), "DaemonSet", "ecs-localdisk-csi-node")
	drv = container(t, ds, "driver")
	if args := field(t, drv, "args"); strings.Contains(args, "metrics") || lookup(drv, "ports", "[name=metrics]") != nil {
		t.Errorf("metrics.port=0 still serves metrics:\n%s", args)
	}
	if _, ok := files["podmonitor.yaml"]; ok {
		t.Errorf("a PodMonitor is rendered by default")
	}
	pm := get(t, chartResMap(t, renderChart(t, helmchart.Namespace, "metrics.podMonitor.enabled=true")), "PodMonitor", "ecs-localdisk-csi-node")
	if got := field(t, pm, "spec", "podMetricsEndpoints", "[port=metrics]", "path"); got != "/metrics" {
		t.Errorf("PodMonitor endpoint path %q", got)
	}
	if got := field(t, pm, "spec", "selector", "matchLabels", "app"); got != "ecs-localdisk-csi-node" {
		t.Errorf("PodMonitor selects app=%q", got)
	}
}
