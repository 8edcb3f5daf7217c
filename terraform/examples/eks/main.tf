# vmreg on an existing EKS cluster: bucket, Redis (with a generated AUTH token) and the
# IRSA role, then the namespace, a Secret with the Redis URL and the Helm release.

terraform {
  required_version = ">= 1.5, < 2.0"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40, < 7.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 2.23, < 3.0"
    }
    helm = {
      source  = "hashicorp/helm"
      version = ">= 2.12, < 3.0"
    }
  }
}

provider "aws" {
  region = var.region
}

data "aws_eks_cluster" "this" {
  name = var.cluster_name
}

data "aws_eks_cluster_auth" "this" {
  name = var.cluster_name
}

provider "kubernetes" {
  host                   = data.aws_eks_cluster.this.endpoint
  cluster_ca_certificate = base64decode(data.aws_eks_cluster.this.certificate_authority[0].data)
  token                  = data.aws_eks_cluster_auth.this.token
}

provider "helm" {
  kubernetes {
    host                   = data.aws_eks_cluster.this.endpoint
    cluster_ca_certificate = base64decode(data.aws_eks_cluster.this.certificate_authority[0].data)
    token                  = data.aws_eks_cluster_auth.this.token
  }
}

variable "cluster_name" {
  description = "The EKS cluster."
  type        = string
}

variable "image_repository" {
  description = "Where the vmreg image (deploy/Dockerfile) was pushed."
  type        = string
}

locals {
  # One place for the service account, so the IRSA trust and the chart agree.
  namespace       = "vmreg"
  service_account = "vmreg"
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "us-east-1"
}

variable "vpc_id" {
  description = "The cluster's VPC."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the cluster."
  type        = list(string)
}

variable "oidc_provider_arn" {
  description = "The cluster's IAM OIDC provider."
  type        = string
}

variable "monitoring_labels" {
  description = "Labels the Prometheus Operator selects ServiceMonitors and PrometheusRules on (kube-prometheus-stack: release = its Helm release). The chart creates them only where the operator's CRDs are installed."
  type        = map(string)
  default     = { release = "kube-prometheus-stack" }
}

variable "eks_node_security_group_id" {
  description = "Security group of the nodes running vmreg (allowed to reach Redis)."
  type        = string
}

module "vmreg" {
  source = "../../modules/vmreg"

  name                             = "vmreg"
  vpc_id                           = var.vpc_id
  subnet_ids                       = var.subnet_ids
  redis_allowed_security_group_ids = [var.eks_node_security_group_id]
  oidc_provider_arn                = var.oidc_provider_arn
  service_account_namespace        = local.namespace
  service_account_name             = local.service_account
  tags = {
    app = "vmreg"
  }
}

module "release" {
  source = "../../modules/vmreg-release"

  namespace            = local.namespace
  service_account_name = local.service_account
  irsa_role_arn        = module.vmreg.irsa_role_arn
  chart_path           = "${path.module}/../../../helm/vmreg"
  image_repository     = var.image_repository
  bucket               = module.vmreg.bucket
  region               = module.vmreg.bucket_region_name
  redis_url            = module.vmreg.redis_url
  values = [yamlencode({
    metrics = {
      serviceMonitor = { enabled = true, labels = var.monitoring_labels }
      prometheusRule = { enabled = true, labels = var.monitoring_labels }
    }
  })]
}

output "bucket" {
  description = "The S3 bucket."
  value       = module.vmreg.bucket
}

output "irsa_role_arn" {
  description = "Role of the vmreg service account."
  value       = module.vmreg.irsa_role_arn
}

output "namespace" {
  description = "Where vmreg runs: helm test vmreg -n <namespace>."
  value       = module.release.namespace
}
