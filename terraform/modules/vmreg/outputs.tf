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
  description = "Redis URL for VMREG_REDIS_URL (TLS)."
  value = format(
    "rediss://%s%s:%d",
    var.redis_auth_token != "" ? ":${urlencode(var.redis_auth_token)}@" : "",
    aws_elasticache_replication_group.redis.primary_endpoint_address,
    aws_elasticache_replication_group.redis.port,
  )
  sensitive = true
}

output "helm_values" {
  description = "Values for helm/vmreg (contains the Redis URL, hence sensitive)."
  sensitive   = true
  value = yamlencode({
    s3 = {
      bucket = aws_s3_bucket.this.bucket
      region = aws_s3_bucket.this.region
    }
    redis = {
      url = format(
        "rediss://%s%s:%d",
        var.redis_auth_token != "" ? ":${urlencode(var.redis_auth_token)}@" : "",
        aws_elasticache_replication_group.redis.primary_endpoint_address,
        aws_elasticache_replication_group.redis.port,
      )
    }
    serviceAccount = {
      create = true
      name   = var.service_account_name
      annotations = var.oidc_provider_arn != "" ? {
        "eks.amazonaws.com/role-arn" = aws_iam_role.irsa[0].arn
      } : {}
    }
  })
}
