module github.com/ecs-localdisk/ecs-localdisk-csi/tests/image

go 1.26.0
