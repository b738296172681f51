"""Pure torch modules and their losses: no file or store I/O here."""
from models.imgaud import AudioNet, Fusion, ImageNet, ImgAud2Vid, imgaud2vid_student
from models.teacher import R2Plus1DTeacher, r2plus1d_teacher

__all__ = ["AudioNet", "Fusion", "ImageNet", "ImgAud2Vid", "imgaud2vid_student", "R2Plus1DTeacher",
           "r2plus1d_teacher"]
