output "bucket" {
  description = "The S3 bucket holding files and manifests."
  value       = aws_s3_bucket.this.bucket
}

output "bucket_region" {
  description = "The bucket's region."
  value       = aws_s3_bucket.this.region
}

output "s3_policy_arn" {
  description = "IAM policy granting vmreg's S3 access (attach it to whatever runs vmreg outside EKS)."
  value       = aws_iam_policy.s3.arn
}

output "irsa_role_arn" {
  description = "Role for the vmreg service account (eks.amazonaws.com/role-arn), when an OIDC provider was given."
  value       = var.oidc_provider_arn != "" ? aws_iam_role.irsa[0].arn : null
}

output "redis_url" {
  description = "Redis URL with the generated AUTH token, for VMREG_REDIS_URL (TLS). Pass it through a Kubernetes Secret (modules/vmreg-release does)."
  value = format(
    "rediss://:%s@%s:%d",
    urlencode(aws_secretsmanager_secret_version.redis.secret_string),
    aws_elasticache_replication_group.redis.primary_endpoint_address,
    aws_elasticache_replication_group.redis.port,
  )
  sensitive = true
}

output "redis_auth_secret_arn" {
  description = "Secrets Manager secret holding the Redis AUTH token."
  value       = aws_secretsmanager_secret.redis.arn
}

output "bucket_region_name" {
  description = "Region of the bucket, for the chart's s3.region."
  value       = data.aws_region.current.name
}

output "service_account" {
  description = "Namespace and name of the Kubernetes service account the IRSA role trusts."
  value = {
    namespace = var.service_account_namespace
    name      = var.service_account_name
  }
}
