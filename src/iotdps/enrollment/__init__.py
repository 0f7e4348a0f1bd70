"""Who may register: individual enrollments, enrollment groups, the CA certificates groups name,
and precedence (`resolve`: which enrollment decides for a device)."""

from iotdps.enrollment.cas import CaCertificate
from iotdps.enrollment.models import Attestation, EnrollmentGroup, IndividualEnrollment

__all__ = ["Attestation", "CaCertificate", "EnrollmentGroup", "IndividualEnrollment"]
