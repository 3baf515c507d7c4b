{{/*
The CSI driver name: the CSIDriver object, the StorageClass provisioner,
the kubelet plugin paths and the node label all carry it.
*/}}
{{- define "ecs-localdisk-csi.driverName" -}}
localdisk.csi.alibabacloud.com
{{- end }}

{{/*
The driver image: the tag defaults to the chart's appVersion.
*/}}
{{- define "ecs-localdisk-csi.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
A sidecar image from its repository and tag.
*/}}
{{- define "ecs-localdisk-csi.sidecarImage" -}}
{{ required "every sidecar needs image.repository" .repository }}:{{ required "every sidecar needs image.tag" .tag }}
{{- end }}

{{/*
The static device list as the driver's --devices takes it: a list of
values joined by commas, or the comma-separated string as given. Fails when
diskSource is static and the list is empty; there is no default on purpose.
*/}}
{{- define "ecs-localdisk-csi.staticDevices" -}}
{{- $devices := .Values.static.devices -}}
{{- if kindIs "slice" $devices -}}
{{- $devices = join "," $devices -}}
{{- end -}}
{{- if not $devices -}}
{{- fail "diskSource=static needs static.devices: the node's local disks as exact device paths or /dev/disk/by-id links, e.g. --set 'static.devices={/dev/vdb,/dev/vdc}'. There is no default because no glob can tell a local disk from a cloud disk: /dev/vd[b-z] or /dev/nvme*n1 also match the disks Alibaba Cloud's disk CSI driver attaches. On ECS use diskSource=ecs, which asks the ECS API which disks are local." -}}
{{- end -}}
{{- $devices -}}
{{- end }}

{{/*
Refuses values that would render a driver that cannot start or that
silently ignores a setting.
*/}}
{{- define "ecs-localdisk-csi.validate" -}}
{{- if not (has .Values.diskSource (list "ecs" "static")) -}}
{{- fail (printf "diskSource is %q; set ecs (the instance's local disks from the ECS API) or static (the disks listed in static.devices)" .Values.diskSource) -}}
{{- end -}}
{{- $provisioner := .Values.sidecars.csiProvisioner -}}
{{- if or (le (float64 $provisioner.kubeAPIQPS) 0.0) (lt (int $provisioner.kubeAPIBurst) 1) -}}
{{- fail (printf "sidecars.csiProvisioner.kubeAPIQPS (%v) and kubeAPIBurst (%v) must be positive: csi-provisioner takes a rate of 0 for its default of 5 and a negative one for no limit at all" $provisioner.kubeAPIQPS $provisioner.kubeAPIBurst) -}}
{{- end -}}
{{- if and (eq .Values.diskSource "ecs") .Values.static.devices -}}
{{- fail "static.devices is only read with diskSource=static: unset it (--set static.devices=null), and with diskSource=ecs narrow the candidate devices with extraArgs: [--devices=...]" -}}
{{- end -}}
{{- end }}
