# vmreg's Kubernetes side: its namespace, a Secret with the Redis URL (the AUTH token never
# appears in Helm values or the release's manifest), and the Helm release wired to both
# and to the IRSA role.

resource "kubernetes_namespace_v1" "this" {
  metadata {
    name = var.namespace
    labels = {
      # The chart's pods meet the restricted Pod Security Standard.
      "pod-security.kubernetes.io/enforce" = "restricted"
    }
  }
}

resource "kubernetes_secret_v1" "env" {
  metadata {
    name      = "${var.release_name}-redis"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
  }
  data = {
    VMREG_REDIS_URL = var.redis_url
  }
}

resource "helm_release" "this" {
  name      = var.release_name
  namespace = kubernetes_namespace_v1.this.metadata[0].name
  chart     = var.chart_path

  values = concat([yamlencode({
    image = {
      repository = var.image_repository
      tag        = var.image_tag
    }
    s3 = {
      bucket = var.bucket
      region = var.region
    }
    existingSecret = kubernetes_secret_v1.env.metadata[0].name
    serviceAccount = {
      create      = true
      name        = var.service_account_name
      annotations = var.irsa_role_arn == null ? {} : { "eks.amazonaws.com/role-arn" = var.irsa_role_arn }
    }
    # The Secret is not the chart's, so a new Redis URL would not roll the pods by itself.
    podAnnotations = {
      "checksum/redis-url" = sha256(var.redis_url)
    }
  })], var.values)
}
