data "aws_caller_identity" "current" {}

data "aws_region" "current" {}

locals {
  # Bucket names are global: the account and region make the default one unique.
  bucket_name = var.bucket_name != "" ? var.bucket_name : "${var.name}-${data.aws_caller_identity.current.account_id}-${data.aws_region.current.name}"
  # IAM names are account-wide: the region keeps a second deployment (another region, same
  # account and name) from colliding with the first.
  iam_name = "${var.name}-${data.aws_region.current.name}"
  # The issuer URL without scheme, as IAM condition keys spell it.
  oidc_issuer = var.oidc_provider_arn != "" ? element(split("oidc-provider/", var.oidc_provider_arn), 1) : ""
}

# --- S3: files and the immutable version manifests --------------------------------------

resource "aws_s3_bucket" "this" {
  bucket        = local.bucket_name
  force_destroy = var.force_destroy
  tags          = var.tags
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

# Parts of uploads abandoned by clients that never resumed are billed until aborted.
resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_days
    }
  }
}

# Plain-HTTP requests are refused, whoever makes them.
data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    resources = [aws_s3_bucket.this.arn, "${aws_s3_bucket.this.arn}/*"]
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.bucket.json
  # The public access block must exist first, or S3 may reject the policy.
  depends_on = [aws_s3_bucket_public_access_block.this]
}

data "aws_iam_policy_document" "s3" {
  statement {
    sid       = "Bucket"
    actions   = ["s3:ListBucket", "s3:ListBucketMultipartUploads"]
    resources = [aws_s3_bucket.this.arn]
  }
  statement {
    sid = "Objects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.this.arn}/*"]
  }
}

resource "aws_iam_policy" "s3" {
  name        = "${local.iam_name}-s3"
  description = "What vmreg needs on its bucket."
  policy      = data.aws_iam_policy_document.s3.json
  tags        = var.tags
  # A new name (e.g. the region added to it) creates the new policy before the old goes.
  lifecycle {
    create_before_destroy = true
  }
}

# --- IRSA: the pods' service account assumes this role -----------------------------------

data "aws_iam_policy_document" "irsa" {
  count = var.oidc_provider_arn != "" ? 1 : 0
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.service_account_namespace}:${var.service_account_name}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "irsa" {
  count              = var.oidc_provider_arn != "" ? 1 : 0
  name               = "${local.iam_name}-irsa"
  assume_role_policy = data.aws_iam_policy_document.irsa[0].json
  tags               = var.tags
  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_iam_role_policy_attachment" "irsa" {
  count      = var.oidc_provider_arn != "" ? 1 : 0
  role       = aws_iam_role.irsa[0].name
  policy_arn = aws_iam_policy.s3.arn
}

# --- Redis: the index, upload sessions and locks -----------------------------------------

# The AUTH token, generated once and kept in Secrets Manager: later plans read the stored
# value back instead of generating a new one. Never an input that lands in plain values.
data "aws_secretsmanager_random_password" "redis" {
  password_length     = 64
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret" "redis" {
  name_prefix = "${var.name}-redis-auth-"
  description = "Redis AUTH token of vmreg's ElastiCache group."
  tags        = var.tags
}

resource "aws_secretsmanager_secret_version" "redis" {
  secret_id     = aws_secretsmanager_secret.redis.id
  secret_string = data.aws_secretsmanager_random_password.redis.random_password
  lifecycle {
    ignore_changes = [secret_string]
  }
}

resource "aws_security_group" "redis" {
  name        = "${var.name}-redis"
  description = "Redis for vmreg"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "redis_cidr" {
  for_each          = toset(var.redis_allowed_cidrs)
  security_group_id = aws_security_group.redis.id
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 6379
  to_port           = 6379
}

resource "aws_vpc_security_group_ingress_rule" "redis_sg" {
  for_each                     = toset(var.redis_allowed_security_group_ids)
  security_group_id            = aws_security_group.redis.id
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
}

resource "aws_elasticache_subnet_group" "redis" {
  name       = "${var.name}-redis"
  subnet_ids = var.subnet_ids
  tags       = var.tags
}

resource "aws_elasticache_replication_group" "redis" {
  replication_group_id       = "${var.name}-redis"
  description                = "vmreg metadata"
  engine                     = "redis"
  engine_version             = var.redis_engine_version
  node_type                  = var.redis_node_type
  port                       = 6379
  num_cache_clusters         = 1 + var.redis_replicas
  automatic_failover_enabled = var.redis_replicas > 0
  multi_az_enabled           = var.redis_replicas > 0
  subnet_group_name          = aws_elasticache_subnet_group.redis.name
  security_group_ids         = [aws_security_group.redis.id]
  at_rest_encryption_enabled = true
  transit_encryption_enabled = true
  auth_token                 = aws_secretsmanager_secret_version.redis.secret_string
  # The index can be rebuilt from S3 (vmreg admin reindex), but snapshots make that rare.
  snapshot_retention_limit = 3
  apply_immediately        = true
  tags                     = var.tags
}
