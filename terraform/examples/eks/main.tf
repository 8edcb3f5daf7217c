# vmreg for an existing EKS cluster: bucket, Redis and the IRSA role, then
# `terraform output -raw helm_values` for helm/vmreg.

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

provider "aws" {
  region = var.region
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
  service_account_namespace        = "vmreg"
  service_account_name             = "vmreg"
  tags = {
    app = "vmreg"
  }
}

output "bucket" {
  description = "The S3 bucket."
  value       = module.vmreg.bucket
}

output "irsa_role_arn" {
  description = "Role of the vmreg service account."
  value       = module.vmreg.irsa_role_arn
}

output "helm_values" {
  description = "Values for helm/vmreg."
  value       = module.vmreg.helm_values
  sensitive   = true
}
